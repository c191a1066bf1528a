"""Backbones with pretrained weights, timm-style: ``pretrained`` is ``False`` (random init),
``True`` (timm's own weights for the timm name, from the Hugging Face hub: needs a network) or a
local file (a timm or torchvision state dict, ``.pth``/``.pt``/``.bin`` or ``.safetensors``).

Every detector builds its backbones here, before it rearranges them, so the same weights reach
ResNet-50, CNNSpot, Spec, GramNet, NPR, ResNet-50-nodown and F3Net's Xceptions. timm adapts what
differs from the checkpoint as it does for its hub weights: the classifier head is dropped and
re-initialised, an input convolution with other channels (F3Net's 12 and 6) is adapted, and a
ViT's position embedding is resampled to the input size. Anything else missing or unexpected is
an error naming the keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from synthdet.data.dataset import IMAGENET, DataConfig
from synthdet.fsutil import load_torch_file

PretrainedSpec = bool | str | None
_CONTAINERS = ("state_dict", "model", "module", "net", "network")  # where checkpoints keep the weights
_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "net.")  # DDP / Lightning / wrapper prefixes


class PretrainedWeightsError(ValueError):
    """Weights that cannot be had (offline) or do not fit the backbone."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from the usual containers and key prefixes."""
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: no such file (train.pretrained: true, false or a local weights file)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except SafetensorError as exc:
            raise PretrainedWeightsError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        state = load_torch_file(path, "pretrained weights")
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in _CONTAINERS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise PretrainedWeightsError(f"{path}: no tensors in it (top-level keys {sorted(state)[:8]})")
        state = inner
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _classifier_keys(model: nn.Module) -> set[str]:
    names = model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else names
    return {f"{n}.{p}" for n in names for p in ("weight", "bias")}


def timm_backbone(timm_name: str, pretrained: PretrainedSpec = False, **kwargs) -> nn.Module:
    """``timm.create_model(timm_name, **kwargs)`` with the weights ``pretrained`` names."""
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    if pretrained is True:
        how = (f"download them where there is a network (timm.create_model('{timm_name}', pretrained=True), then "
               f"torch.save(model.state_dict(), '{timm_name}.pth')) and set train.pretrained to that file")
        if _offline():
            raise PretrainedWeightsError(
                f"train.pretrained: true needs timm's '{timm_name}' weights from the Hugging Face hub, but "
                f"HF_HUB_OFFLINE=1 (synthdet's default; export HF_HUB_OFFLINE=0 to allow the download); or {how}")
        try:
            return timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any hub/network failure becomes the one clear message
            raise PretrainedWeightsError(f"timm's pretrained '{timm_name}' weights could not be loaded ({exc}); "
                                         f"{how}") from exc
    path = Path(pretrained)
    state = read_state_dict(path)
    plain = timm.create_model(timm_name, pretrained=False, **kwargs)
    head = _classifier_keys(plain)
    own_state = plain.state_dict()
    own = set(own_state)
    # BatchNorm's num_batches_tracked counters are missing from many published checkpoints (PyTorch's
    # strict loading accepts that); they only count training steps, so they start at zero
    state = {**{k: torch.zeros_like(own_state[k]) for k in own - set(state) if k.endswith("num_batches_tracked")},
             **state}
    missing, unexpected = sorted(own - set(state) - head), sorted(set(state) - own - head)
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{path}: not {timm_name} weights in timm's (or torchvision's) naming: missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    try:
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
    except RuntimeError as exc:  # shapes that neither match nor adapt
        raise PretrainedWeightsError(f"{path}: the weights do not fit {timm_name}: {exc}") from exc


TRANSFORMERS = ("vit_", "deit_", "swin", "beit", "eva", "cait", "xcit")  # timm names built for one input size


class TimmDetector(nn.Module):
    """Any timm model with one fake logit: GenImage's generic backbones and the base of the
    detectors that only rearrange or feed one (CNNSpot, Spec, ResNet-50-nodown)."""

    data_config: DataConfig = IMAGENET

    def __init__(self, timm_name: str, img_size: int = 224, pretrained: PretrainedSpec = False, **kwargs) -> None:
        super().__init__()
        if timm_name.startswith(TRANSFORMERS):
            kwargs.setdefault("img_size", img_size)
        self.model = timm_backbone(timm_name, pretrained, num_classes=1, **kwargs)
        self.timm_name = timm_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).squeeze(1)
