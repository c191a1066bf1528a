"""Frozen-feature linear probes (UnivFD's recipe, Ojha et al. CVPR 2023): a pretrained backbone,
frozen, turns each image into one pooled feature vector, computed once for every image a table
reads; a logistic-regression head per training subset (sklearn) is all that is learnt.

A probe's backbone is named by its weights: a packaged source of :mod:`synthdet.detectors.weights`
(``efficientnet_lite0`` ... ``mobilenet_v2``: offline, checked once on the labelled ImageNet photos)
or a name the params define (``probe.custom``: any timm architecture with timm's hub weights,
``weights: hub``, or a local file), e.g. UnivFD's own CLIP ViT-L/14
(``vit_large_patch14_clip_224.openai``) or DINOv2. The backbone sees images as its weights were
trained to (its ImageNet view's mean, std and interpolation), at ``probe.input_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from synthdet.data.dataset import DataConfig
from synthdet.detectors.backbones import TRANSFORMERS, PretrainedWeightsError, timm_backbone
from synthdet.detectors.weights import (
    PACKAGED,
    TIMM_HUB,
    TORCHVISION,
    eval_view,
    imagenet_model,
    pretrained_start,
    resolve,
)

HUB = "hub"  # probe.custom's ``weights: hub``: timm's own weights for the architecture (needs a network)
_TORCHVISION_HEADS = ("fc", "classifier", "heads", "head")  # where torchvision models keep their classifier


@dataclass(frozen=True)
class BackboneSource:
    """A probe backbone: what the tables call it, its architecture and where its weights come from."""

    name: str
    arch: str  # a timm name or torchvision:<name>
    weights: str  # a packaged source, timm:<arch> (the hub) or a file

    @classmethod
    def named(cls, name: str, custom: dict | None = None) -> BackboneSource:
        custom = custom or {}
        if name in custom:
            entry = custom[name]
            if not isinstance(entry, dict) or not entry.get("arch") or not entry.get("weights"):
                raise ValueError(f"probe.custom.{name}: expected {{arch: <timm name or torchvision:<name>>, "
                                 f"weights: <file or {HUB}>}}, got {entry!r}")
            arch, weights = str(entry["arch"]), str(entry["weights"])
            if weights == HUB:
                if arch.startswith(TORCHVISION):
                    raise ValueError(f"probe.custom.{name}: weights: {HUB} is for timm names; give "
                                     f"torchvision's file for {arch}")
                weights = f"{TIMM_HUB}{arch}"
            elif not Path(weights).is_file():
                raise PretrainedWeightsError(f"probe.custom.{name}: {weights}: no such weights file")
            return cls(name, arch, weights)
        if name in PACKAGED:
            return cls(name, PACKAGED[name].arch, name)
        raise ValueError(f"probe backbone {name!r}: neither a packaged weights source ({', '.join(PACKAGED)}) nor "
                         f"a name in probe.custom ({', '.join(custom) or 'empty'})")


class FrozenBackbone(nn.Module):
    """An ImageNet network without its classifier: images -> pooled features, never trained. A
    transformer is built for ``input_size`` (its position embedding resampled, as timm does)."""

    def __init__(self, source: BackboneSource, input_size: int = 224) -> None:
        super().__init__()
        if source.weights in PACKAGED:
            pretrained_start(source.weights)  # checked once on the labelled photos; refused if it fails
        if source.arch.startswith(TORCHVISION):
            arch, net = imagenet_model(source.weights, source.arch)
            head = next((h for h in _TORCHVISION_HEADS if isinstance(getattr(net, h, None), nn.Module)), None)
            if head is None:
                raise PretrainedWeightsError(f"{arch}: no classifier found to remove ({', '.join(_TORCHVISION_HEADS)})")
            setattr(net, head, nn.Identity())
        else:  # timm: num_classes=0 gives the pooled pre-logits features
            arch, path = resolve(source.weights, source.arch)
            kwargs = {"img_size": input_size} if arch.startswith(TRANSFORMERS) else {}
            net = timm_backbone(arch, True if path is None else str(path), num_classes=0, **kwargs)
        self.data_config: DataConfig = eval_view(arch, net).data
        self.net = net.eval().requires_grad_(False)
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)

    def score_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features only: the probe's head is fitted on them (training.scoring.network_outputs)."""
        return {"features": self(x)}


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
              cs: list[float], seed: int = 0) -> tuple[Pipeline, dict]:
    """Standardised features -> L2 logistic regression, its inverse strength ``C`` chosen from ``cs``
    by validation AUC (ties: the stronger penalty); fitted on the training features only."""
    if len(np.unique(train_y)) < 2:
        raise ValueError(f"a probe needs real and fake training images (labels here: {sorted(set(train_y))})")
    tried = []
    for c in sorted(cs):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))
        model.fit(train_x, train_y)
        auc = (float(roc_auc_score(val_y, model.predict_proba(val_x)[:, 1]))
               if len(val_x) and len(np.unique(val_y)) == 2 else float("nan"))
        tried.append((c, auc, model))
    scored = [t for t in tried if np.isfinite(t[1])]
    c, auc, model = max(scored, key=lambda t: t[1]) if scored else tried[len(tried) // 2]
    return model, {"C": c, "val_auc": auc, "C_val_auc": {str(t[0]): t[1] for t in tried}}
