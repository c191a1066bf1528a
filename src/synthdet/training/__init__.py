"""Training and scoring detectors. Empty on purpose: a stage depends on the files it imports, so
each caller imports the one module it needs (config, runtime, checkpoint, loop, scoring)."""
