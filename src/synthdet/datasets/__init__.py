"""The embedded benchmark, self-contained (its generators, its package sources). The papers' own
datasets live with their paper: :mod:`synthdet.genimage`, :mod:`synthdet.imaginet`."""
