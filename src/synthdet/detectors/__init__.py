"""Detectors: a name -> builder registry (the timm / DeepfakeBench pattern), one file each."""

# importing each module registers its detectors
from synthdet.detectors import cnnspot, f3net, gramnet, npr, resnet_nodown, spec, timm_backbones  # noqa: F401
from synthdet.detectors.registry import create_detector, list_detectors, register_detector

__all__ = ["create_detector", "list_detectors", "register_detector"]
