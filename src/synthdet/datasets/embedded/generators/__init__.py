"""The embedded benchmark's fake-image makers, one file per generator family.

Every generator maps real training images (N, 3, H, W) in [-1, 1] to fakes of the same size and
mode, so that the only systematic difference between the two sides is the generator itself.
"""
