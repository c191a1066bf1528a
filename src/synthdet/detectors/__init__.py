"""Detectors: a name -> builder registry (the timm / DeepfakeBench pattern), one file each."""

from synthdet.detectors import timm_backbones  # noqa: F401  (registers the timm-based detectors)
from synthdet.detectors.registry import create_detector, list_detectors, register_detector

__all__ = ["create_detector", "list_detectors", "register_detector"]
