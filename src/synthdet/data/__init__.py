"""Data sources, the manifest every stage reads, splits and robust image decoding."""
