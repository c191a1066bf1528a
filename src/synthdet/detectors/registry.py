"""Name -> builder registry. Every detector maps (N, 3, H, W) images to (N,) fake logits (a network
with other outputs, such as ImagiNet's, names them in ``score_outputs``: training.scoring)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from synthdet.data.dataset import DataConfig
from synthdet.detectors.backbones import TimmDetector
from synthdet.fsutil import CheckpointError, load_torch_file

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_UNLISTED: set[str] = set()


def register_detector(name: str, listed: bool = True) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """``listed=False``: a network that :func:`create_detector` builds (so that one loader reads its
    checkpoints) but that is no detector of the generic grid (ImagiNet's methods, trained by
    their own recipe): :func:`list_detectors` leaves it out."""
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"detector {name!r} registered twice")
        _REGISTRY[name] = builder
        if not listed:
            _UNLISTED.add(name)
        return builder
    return wrap


def builder_module(name: str) -> str:
    """The module whose code builds ``name``: its registered builder's, or the timm wrapper's for
    any other timm name (what a run's code fingerprint hashes besides the loop)."""
    return _REGISTRY[name].__module__ if name in _REGISTRY else TimmDetector.__module__


def registered_names() -> list[str]:
    """Every registered name, ImagiNet's networks (unlisted) too."""
    return sorted(_REGISTRY)


def list_detectors() -> list[str]:
    return sorted(set(_REGISTRY) - _UNLISTED)


def create_detector(name: str, img_size: int = 224, weights: str | None = None, pretrained: bool | str | None = False,
                    **kwargs) -> nn.Module:
    """Build a registered detector, or any timm model by its timm name, with one fake logit.

    ``pretrained`` initialises its backbones (``True``: timm's weights, which needs the hub; a path:
    a local timm/torchvision file; see ``backbones.py``). ``weights`` then loads a whole detector
    checkpoint (``detector.pt``). synthdet sets HF_HUB_OFFLINE=1 unless you export 0.
    """
    if name in _REGISTRY:
        model = _REGISTRY[name](img_size=img_size, pretrained=pretrained, **kwargs)
    else:
        model = TimmDetector(name, img_size=img_size, pretrained=pretrained, **kwargs)
    if not isinstance(getattr(model, "data_config", None), DataConfig):
        raise TypeError(f"detector {name!r} declares no data_config (synthdet.data.dataset.DataConfig)")
    if weights:
        path = Path(weights)
        state = load_torch_file(path, "detector weights")
        state = state.get("model", state) if isinstance(state, Mapping) else state
        if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not detector weights: a {type(state).__name__} where a state dict of "
                                  "tensors is expected (a detector.pt, or a file of model.state_dict())")
        own = model.state_dict()
        # a new head (one logit instead of ImageNet's 1000) may be missing or shaped otherwise, nothing else
        reshaped = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in reshaped},
                                                    strict=False)
        if unexpected or len(missing) > 2:
            raise ValueError(f"{path}: weights do not fit {name} (missing {missing[:5]}, unexpected {unexpected[:5]}, "
                             f"other shapes {reshaped[:5]})")
    return model
