"""ImagiNet (Boychev et al., 2024): its annotation files and perturbed test set, its augmentations,
the SelfCon + calibration baseline, the two tracks' tables, its figures and 2-D map."""
