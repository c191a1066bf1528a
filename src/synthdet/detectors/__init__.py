"""Detectors: a name -> builder registry (the timm / DeepfakeBench pattern), one file each."""

# importing each module registers its detectors
from synthdet.detectors import (  # noqa: F401
    cnnspot,
    efficientnet_lite,
    f3net,
    gramnet,
    mobilenet_v2,
    npr,
    resnet_nodown,
    selfcon,
    spec,
    timm_backbones,
)
from synthdet.detectors.registry import create_detector, list_detectors, register_detector

__all__ = ["create_detector", "list_detectors", "register_detector"]
