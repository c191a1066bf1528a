"""GenImage (Zhu et al., NeurIPS 2023): its archives (split zips, MD5 list), its folder layout and
known-corrupt files, and its tables. Builds on data, transforms, detectors, training and analysis."""
