"""ImagiNet's baseline (Boychev and Cholakov 2024): ResNet-50 without early downsampling, trained
with the single-view SelfCon objective (Bae et al. 2022), then calibrated with an MLP classifier.

- :class:`SelfConNet`: the backbone with its two output mappings Omega = {H_sub(F_m(x)), H(F(x))}:
  H projects the pooled 2048-d features, the sub-network H_sub (a fully connected one, "fc")
  the pooled features after ResNet block ``m`` (2 by default); both output unit vectors in R^128.
- :func:`selfcon_loss`: equation 1 of ImagiNet (SelfCon's), for one labelling; ImagiNet sums it
  over two, origin and model identification (real images left out of the latter):
  :func:`imaginet_pretraining_loss`.
- Stage 2: the sub-network and projection heads are dropped; :class:`CalibrationHead` (L2
  normalise, Linear(2048, 1024), ReLU, Linear(1024, n)) classifies the backbone's features, one
  head per track, after :func:`update_bn_statistics` (Schneider et al. 2020) on calibration images.
- :class:`SelfConDetector`: backbone + origin head with the registry's interface (one fake logit
  per image). Registered as ``imaginet_selfcon`` (and the cross-entropy rows' network as
  ``imaginet_ce``) so that the one loader (``training.checkpoint.load_detector``) rebuilds it from
  its ``detector.pt``, but unlisted: neither is a detector of the generic grid. Each declares its
  ``objective``: the one training loop trains it only with that objective (trained with binary
  cross-entropy it would not be ImagiNet's baseline), which :mod:`synthdet.imaginet.baseline`
  brings (stage ``imaginet_train``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from synthdet.data.dataset import DataConfig
from synthdet.detectors.backbones import PretrainedSpec, timm_backbone
from synthdet.detectors.registry import register_detector

FEATURES = 2048  # ResNet-50's pooled features
# ImagiNet's code normalises with ImageNet's mean and std and resamples bilinearly (its random
# resized crop and its zoom condition, imaginet/augment.py); its test view is a centre crop
IMAGINET_INPUT = DataConfig(interpolation="bilinear", view="crop")


def projection(in_features: int, out_features: int = 128) -> nn.Sequential:
    """SupCon's projection head: Linear, ReLU, Linear (its outputs are L2-normalised by the caller)."""
    return nn.Sequential(nn.Linear(in_features, in_features), nn.ReLU(inplace=True),
                         nn.Linear(in_features, out_features))


def strip_downsampling(backbone: nn.Module) -> nn.Module:
    """A timm ResNet without its early downsampling (Gragnaniello et al. 2021): stride-1 stem, no max-pool."""
    backbone.conv1.stride = (1, 1)
    backbone.maxpool = nn.Identity()
    return backbone


class SelfConNet(nn.Module):
    """A timm ResNet (ImagiNet's: ResNet-50 without early downsampling) with the main projection
    head H and the fc sub-network H_sub after block ``sub_block``. ``backbone`` and ``nodown``
    exist for the CPU budget of the embedded benchmark, where the paper's network costs 16x."""

    def __init__(self, pretrained: PretrainedSpec = False, sub_block: int = 2, feat_dim: int = 128,
                 backbone: str = "resnet50", nodown: bool = True) -> None:
        super().__init__()
        if sub_block not in (1, 2, 3):
            raise ValueError(f"sub_block must be 1, 2 or 3 (a ResNet block before the last), not {sub_block}")
        self.backbone = timm_backbone(backbone, pretrained, num_classes=0)
        if not all(hasattr(self.backbone, name) for name in ("conv1", "maxpool", "layer4")):
            raise ValueError(f"{backbone!r} is not a timm ResNet (the sub-network hangs after a ResNet block)")
        if nodown:
            strip_downsampling(self.backbone)
        self.sub_block = sub_block
        channels = [info["num_chs"] for info in self.backbone.feature_info if info["module"].startswith("layer")]
        self.head = projection(self.backbone.num_features, feat_dim)
        self.sub_head = projection(channels[sub_block - 1], feat_dim)

    def _blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features after block ``sub_block``, pooled final features)."""
        b = self.backbone
        x = b.maxpool(b.act1(b.bn1(b.conv1(x))))
        intermediate = None
        for k, layer in enumerate((b.layer1, b.layer2, b.layer3, b.layer4), start=1):
            x = layer(x)
            if k == self.sub_block:
                intermediate = x.mean(dim=(2, 3))
        return intermediate, x.mean(dim=(2, 3))  # type: ignore[return-value]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled representation (2048-d for ResNet-50: what stage 2 classifies)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The two views, stacked: (2, N, feat_dim) unit vectors, [H_sub(F_m(x)), H(F(x))]."""
        intermediate, final = self._blocks(x)
        return torch.stack([F.normalize(self.sub_head(intermediate), dim=1), F.normalize(self.head(final), dim=1)])


def selfcon_loss(views: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Equation 1 of ImagiNet (Bae et al.'s SelfCon), with views ``(|Omega|, N, D)`` of unit vectors:

    sum over anchors i and views w of -1 / (|P(i)| |Omega|) * sum over positives p in P(i) and
    views w' of log( exp(w(x_i).w'(x_p) / t) / sum over l in Q(i) of exp(w(x_i).w'(x_l) / t) ),

    Q(i) = every other example, P(i) = those of Q(i) with i's label. Averaged over the anchors
    that have a positive (the equation's sum divided by their number: the scale, not the
    direction, of the gradient); 0 when no anchor has one.
    """
    n_views, n = views.shape[:2]
    labels = labels.reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"{labels.numel()} labels for {n} examples")
    others = ~torch.eye(n, dtype=torch.bool, device=views.device)  # Q(i)
    positives = (labels[:, None] == labels[None, :]) & others  # P(i)
    count = positives.sum(dim=1)
    has = count > 0
    if not has.any():
        return views.sum() * 0.0
    total = views.new_zeros(())
    for w in range(n_views):
        for w2 in range(n_views):
            logits = views[w] @ views[w2].T / temperature
            log_denominator = torch.logsumexp(logits.masked_fill(~others, float("-inf")), dim=1, keepdim=True)
            log_prob = (logits - log_denominator).masked_fill(~positives, 0.0)
            total = total + (-(log_prob.sum(dim=1)[has] / count[has]) / n_views).sum()
    return total / (n_views * has.sum())


def imaginet_pretraining_loss(views: torch.Tensor, origin: torch.Tensor, model: torch.Tensor,
                              temperature: float = 0.07) -> torch.Tensor:
    """ImagiNet's stage 1: SelfCon on the origin labels plus SelfCon on the model labels of the
    synthetic images only (real ones are ignored there), with equal weights."""
    synthetic = origin.reshape(-1) == 1
    loss = selfcon_loss(views, origin, temperature)
    if synthetic.sum() > 1:
        loss = loss + selfcon_loss(views[:, synthetic], model.reshape(-1)[synthetic], temperature)
    return loss


class CalibrationHead(nn.Module):
    """Stage 2's classifier of the backbone's features: L2 normalise, Linear(2048, 1024), ReLU,
    Linear(1024, n_classes)."""

    def __init__(self, n_classes: int, in_features: int = FEATURES, hidden: int = 1024) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(F.normalize(features, dim=1))


@torch.no_grad()
def update_bn_statistics(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Schneider et al. 2020: re-estimate every batch-norm layer's running mean and variance on
    ``batches`` (calibration images), as a plain average over them (momentum None), leaving every
    weight as it is. Returns the number of images seen; the module is left in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    seen = 0
    try:
        for x in batches:
            module(x)
            seen += len(x)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        module.eval()
    if not seen:
        raise ValueError("no calibration images to update the batch-norm statistics with")
    return seen


class SelfConDetector(nn.Module):
    """The calibrated baseline as a detector: backbone features -> origin head (2 classes) ->
    one fake logit (log p(synthetic) - log p(real)); ``model_head`` identifies the generator."""

    data_config: DataConfig = IMAGINET_INPUT
    objective = "selfcon"  # ImagiNet's two stages: SelfCon pre-training, then calibration

    def __init__(self, pretrained: PretrainedSpec = False, n_models: int = 4, sub_block: int = 2,
                 backbone: str = "resnet50", nodown: bool = True) -> None:
        super().__init__()
        self.net = SelfConNet(pretrained, sub_block, backbone=backbone, nodown=nodown)
        features = self.net.backbone.num_features
        self.origin_head = CalibrationHead(2, features, hidden=min(1024, features * 2))
        self.model_head = CalibrationHead(n_models, features, hidden=min(1024, features * 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.origin_head(self.net.features(x))
        return logits[:, 1] - logits[:, 0]

    def identify(self, x: torch.Tensor) -> torch.Tensor:
        """Model-identification logits (ImagiNet's second track)."""
        return self.model_head(self.net.features(x))

    def score_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both tracks and the pooled features from one pass of the backbone (training.scoring)."""
        features = self.net.features(x)
        origin = self.origin_head(features)
        return {"logit": origin[:, 1] - origin[:, 0], "model_logits": self.model_head(features), "features": features}


class CrossEntropyNet(nn.Module):
    """Table 3's cross-entropy comparison rows (Grag2021, Corvi2022): the same backbone as
    :class:`SelfConNet` (ResNet-50 without early downsampling in the paper) and one linear layer
    over its pooled features, two classes (real, synthetic)."""

    data_config: DataConfig = IMAGINET_INPUT
    objective = "cross_entropy"  # two-class cross-entropy with ImagiNet's crops and optimiser

    def __init__(self, pretrained: PretrainedSpec = False, backbone: str = "resnet50", nodown: bool = True) -> None:
        super().__init__()
        self.backbone = timm_backbone(backbone, pretrained, num_classes=0)
        if nodown:
            strip_downsampling(self.backbone)
        self.fc = nn.Linear(self.backbone.num_features, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two-class logits (real, synthetic)."""
        return self.fc(self.backbone(x))

    def score_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fake logit (log p(synthetic) - log p(real)) and the pooled features (training.scoring)."""
        features = self.backbone(x)
        logits = self.fc(features)
        return {"logit": logits[:, 1] - logits[:, 0], "features": features}


@register_detector("imaginet_selfcon", listed=False)
def imaginet_selfcon(img_size: int = 256, pretrained: PretrainedSpec = False, **kwargs) -> SelfConDetector:  # noqa: ARG001
    """ImagiNet's baseline (its input: a crop of any size; ``img_size`` is not needed)."""
    return SelfConDetector(pretrained, **kwargs)


@register_detector("imaginet_ce", listed=False)
def imaginet_ce(img_size: int = 256, pretrained: PretrainedSpec = False, **kwargs) -> CrossEntropyNet:  # noqa: ARG001
    """Table 3's cross-entropy comparison network."""
    return CrossEntropyNet(pretrained, **kwargs)
