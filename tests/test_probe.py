"""Frozen-feature linear probes (UnivFD's recipe): real ImageNet backbones from the PyPI wheels,
their pooled features, the logistic head, and which images the features stage reads."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter

from synthdet.detectors import probe as P
from synthdet.detectors import weights as W
from synthdet.detectors.backbones import PretrainedWeightsError
from synthdet.stages import probe as stage
from synthdet.training.scoring import score
from tests.test_weights import photos  # noqa: F401 - the labelled ImageNet photos fixture

ROOT = Path(__file__).resolve().parents[1]


def _rows(paths: list[Path], label: int) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(p) for p in paths], "label": label})


def embed(network: torch.nn.Module, rows: pd.DataFrame, input_size: int, batch_size: int) -> np.ndarray:
    """The network's outputs per row through the one scoring call (the features stage's way)."""
    return score(network, rows, input_size=input_size, features=True, batch_size=batch_size, device="cpu")[1]


def test_features_are_the_imagenet_networks_pre_logits(photos):  # noqa: F811
    """The probe's features are what the ImageNet head reads: that head on them gives the whole
    network's logits, and its top-1 on the labelled photos (the weights' check) survives."""
    backbone = P.FrozenBackbone(P.BackboneSource.named("efficientnet_lite0"))
    assert backbone.data_config.mean == (0.5, 0.5, 0.5) and backbone.data_config.interpolation == "bicubic"
    items = W.labelled_photos(photos)
    features = embed(backbone, _rows([p for p, _ in items], 0), 224, batch_size=8)
    assert features.shape == (20, 1280) and np.isfinite(features).all()
    _, full = W.imagenet_model("efficientnet_lite0")
    full.data_config = backbone.data_config
    full.score_outputs = lambda x: {"features": full(x)}  # all 1000 logits, not a fake logit
    whole = embed(full, _rows([p for p, _ in items], 0), 224, batch_size=8)
    with torch.no_grad():
        head = full.get_classifier()(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(head, whole, rtol=1e-3, atol=1e-3)
    # the probe's view (short side to 224, no crop margin) is not the check's 256-then-crop: 17 or 18 of 20
    assert sum(int(q) == y for q, (_, y) in zip(head.argmax(1), items, strict=True)) >= 17
    assert not any(p.requires_grad for p in backbone.parameters())


def test_torchvision_backbone_loses_its_classifier_only():
    backbone = P.FrozenBackbone(P.BackboneSource.named("mobilenet_v2"))
    out = backbone(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1280)  # MobileNetV2's pooled features, not 1000 logits
    assert backbone.data_config.interpolation == "bilinear"


def test_a_probe_on_real_features_tells_photos_from_their_smoothed_copies(photos, tmp_path):  # noqa: F811
    """The shortcut the audit measures, learnt by a probe: 64 px photos against blurred copies."""
    real, fake = [], []
    for i, (p, _) in enumerate(W.labelled_photos(photos)):
        img = Image.open(p).convert("RGB").resize((64, 64), Image.BICUBIC)
        img.save(tmp_path / f"real{i}.png")
        img.filter(ImageFilter.GaussianBlur(1.5)).save(tmp_path / f"fake{i}.png")
        real.append(tmp_path / f"real{i}.png")
        fake.append(tmp_path / f"fake{i}.png")
    rows = pd.concat([_rows(real, 0), _rows(fake, 1)], ignore_index=True)
    backbone = P.FrozenBackbone(P.BackboneSource.named("efficientnet_lite0"))
    x = embed(backbone, rows, 224, batch_size=20)
    y = rows["label"].to_numpy()
    train = np.r_[0:12, 20:32]
    val = np.r_[12:20, 32:40]
    head, info = P.fit_probe(x[train], y[train], x[val], y[val], [0.01, 0.1, 1.0])
    assert info["val_auc"] >= 0.9 and info["C"] in (0.01, 0.1, 1.0)
    accuracy = (head.predict_proba(x[val])[:, 1] > 0.5).astype(int) == y[val]
    assert accuracy.mean() >= 0.8


def test_fit_probe_picks_c_by_validation_auc_and_refuses_one_label():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] > 0).astype(int)
    x[:, 0] += 3 * (2 * y - 1)  # a wide margin: every C ranks the validation images perfectly
    _, info = P.fit_probe(x[:60], y[:60], x[60:], y[60:], [10.0, 1.0, 0.1])
    assert info["val_auc"] == 1.0
    assert info["C"] == 0.1  # a tie: the strongest penalty is kept
    assert set(info["C_val_auc"]) == {"0.1", "1.0", "10.0"}
    with pytest.raises(ValueError, match="real and fake"):
        P.fit_probe(x[:10], np.zeros(10, int), x[10:20], y[10:20], [1.0])


def test_backbone_names_resolve_or_say_what_is_known(tmp_path):
    assert P.BackboneSource.named("efficientnet_lite1").arch == "tf_efficientnet_lite1"
    hub = P.BackboneSource.named("clip", {"clip": {"arch": "vit_large_patch14_clip_224.openai", "weights": "hub"}})
    assert hub.weights == "timm:vit_large_patch14_clip_224.openai"  # what weights.resolve sends to timm's hub
    with pytest.raises(ValueError, match="efficientnet_lite0.*probe.custom"):
        P.BackboneSource.named("resnet_typo")
    with pytest.raises(PretrainedWeightsError, match="no such weights file"):
        P.BackboneSource.named("mine", {"mine": {"arch": "resnet18", "weights": str(tmp_path / "gone.pth")}})
    with pytest.raises(ValueError, match="expected"):
        P.BackboneSource.named("mine", {"mine": {"arch": "resnet18"}})
    with pytest.raises(ValueError, match="torchvision"):
        P.BackboneSource.named("tv", {"tv": {"arch": "torchvision:resnet18", "weights": "hub"}})


def test_a_custom_local_file_probes_through_the_same_path(tmp_path):
    """A user's own timm file (here timm's resnet18, random weights, saved as a user would): the
    backbone loads it, drops the head and gives pooled features (mechanics only: no ImageNet claim)."""
    import timm

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    source = P.BackboneSource.named("mine", {"mine": {"arch": "resnet18", "weights": str(tmp_path / "resnet18.pth")}})
    assert P.FrozenBackbone(source)(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
    # a ViT (UnivFD's CLIP and DINOv2 are ViTs) saved at 224 px, probed at 64: its position embedding resampled
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), tmp_path / "vit.pth")
    vit = P.BackboneSource.named("vit", {"vit": {"arch": "vit_tiny_patch16_224", "weights": str(tmp_path / "vit.pth")}})
    assert P.FrozenBackbone(vit, input_size=64)(torch.zeros(2, 3, 64, 64)).shape == (2, 192)


def test_the_predefined_hub_backbones_name_real_timm_architectures():
    """probe.custom's clip_l14 and dinov2_b14 (UnivFD's and DINOv2's weights, online only)."""
    import timm
    import yaml

    custom = yaml.safe_load((ROOT / "params.yaml").read_text())["probe"]["custom"]
    for name in ("clip_l14", "dinov2_b14"):
        source = P.BackboneSource.named(name, custom)
        assert source.weights.startswith(W.TIMM_HUB) and source.arch in timm.list_pretrained()


def test_feature_rows_are_what_the_probe_reads_once_each():
    splits = pd.DataFrame({"path": ["a", "b", "c", "d", "e"], "label": [0, 1, 0, 1, 0],
                           "split": ["train", "val", "test", "test", "train"],
                           "subset": ["ldm", "ldm", "ldm", "vae", "vae"]})
    degraded = pd.DataFrame({"path": ["c", "d", "c_blur", "d_blur"], "label": [0, 1, 0, 1],
                             "condition": ["clean", "clean", "blur", "blur"], "subset": ["ldm", "vae", "ldm", "vae"]})
    assert stage.feature_rows(splits, degraded, "ldm")["path"].tolist() == ["a", "b", "e", "c", "d", "c_blur"]
    assert len(stage.feature_rows(splits, degraded, "all")) == 7
