"""Each detector declares the input it wants (timm's ``pretrained_cfg``): its ``data_config``.
Every detector declares what it was given before the declaration existed, and the Dataset,
predict, ``synthdet predict`` and ImagiNet's baseline read it from the detector."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from synthdet.data.dataset import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, DataConfig, make_transform
from synthdet.data.imageio import centre_crop, fit_to_input
from synthdet.detectors import create_detector, list_detectors
from synthdet.detectors.backbones import TimmDetector
from synthdet.detectors.cnnspot import BlurJpegAugment
from synthdet.detectors.selfcon import CrossEntropyNet, SelfConDetector
from synthdet.imaginet.baseline import AugmentedRows
from synthdet.predict import predict_files
from synthdet.training import checkpoint
from synthdet.training.scoring import score
from tests.conftest import noise_image

ODD = DataConfig(mean=(0.2, 0.5, 0.7), std=(0.1, 0.3, 0.2), interpolation="nearest")


def _by_hand(img, size: int, data: DataConfig) -> torch.Tensor:
    view = torch.from_numpy(np.array(fit_to_input(img, size, data.interpolation))).permute(2, 0, 1).float() / 255
    return (view - torch.tensor(data.mean)[:, None, None]) / torch.tensor(data.std)[:, None, None]


# the detectors that were normalised with ImageNet's mean and std and resized bicubically before
# detectors declared their input; the pretrained-weights detectors declare their weights' view
BEFORE_DATA_CONFIGS = {"cnnspot", "deit_s", "f3net", "gramnet", "npr", "resnet50", "resnet50_nodown", "spec", "swin_t"}
WEIGHTS_VIEW = {**{f"effnet_lite{k}": ((0.5,) * 3, (0.5,) * 3, "bicubic") for k in range(3)},
                "mobilenet_v2": (IMAGENET_MEAN, IMAGENET_STD, "bilinear")}


def test_every_detector_declares_imagenet_normalisation_and_the_bicubic_resize_it_always_had():
    assert set(list_detectors()) == BEFORE_DATA_CONFIGS | set(WEIGHTS_VIEW)
    for name in list_detectors():
        data = create_detector(name, img_size=32).data_config
        expected = WEIGHTS_VIEW.get(name, (IMAGENET_MEAN, IMAGENET_STD, "bicubic"))
        assert (data.mean, data.std, data.interpolation) == expected, name
        assert isinstance(data.train_augment, BlurJpegAugment) if name == "cnnspot" else data.train_augment is None
    assert create_detector("resnet18", img_size=32).data_config == IMAGENET  # any timm name
    # ImagiNet's code: ImageNet's mean and std, bilinear resampling in its crops and zoom condition
    # and its test view: the central square at the image's own resolution, padded if smaller
    for net in (SelfConDetector(n_models=2, backbone="resnet18"), CrossEntropyNet(backbone="resnet18")):
        assert (net.data_config.mean, net.data_config.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert (net.data_config.interpolation, net.data_config.view) == ("bilinear", "crop")


def test_a_detector_without_a_data_config_or_with_a_bad_one_is_refused(monkeypatch):
    from synthdet.detectors import registry

    monkeypatch.setitem(registry._REGISTRY, "bare", lambda img_size, pretrained: torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="detector 'bare' declares no data_config"):
        create_detector("bare")
    with pytest.raises(ValueError, match="interpolation 'box'"):
        DataConfig(interpolation="box")
    with pytest.raises(ValueError, match="std > 0"):
        DataConfig(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="view 'stretch'"):
        DataConfig(view="stretch")


class _Recorder(TimmDetector):
    """A detector that remembers the batches it was shown."""

    def __init__(self, data: DataConfig) -> None:
        super().__init__("resnet18", img_size=24)
        self.data_config, self.seen = data, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return super().forward(x)


def test_the_dataset_and_predict_view_images_as_the_detector_declares(tmp_path):
    img = noise_image(3, (41, 29))
    path = tmp_path / "a.png"
    img.save(path)
    assert torch.allclose(make_transform(24, train=False, data=ODD)(img), _by_hand(img, 24, ODD), atol=1e-5)
    assert not torch.allclose(_by_hand(img, 24, ODD), _by_hand(img, 24, IMAGENET), atol=1e-2)
    model = _Recorder(ODD)
    score(model, pd.DataFrame({"path": [str(path)], "label": [1]}), input_size=24, channels_last=False)
    assert torch.allclose(model.seen[0][0], _by_hand(img, 24, ODD), atol=1e-5)
    # the crop view: no resampling, a 41x29 image reflection-padded to 32 high, its centre 32 square
    cropped = _Recorder(dataclasses.replace(ODD, view="crop"))
    score(cropped, [path], input_size=32, channels_last=False)
    padded = np.pad(np.asarray(img), ((1, 2), (0, 0), (0, 0)), mode="reflect")[:, 4:36]
    by_hand = torch.from_numpy(padded.copy()).permute(2, 0, 1).float() / 255
    expected = (by_hand - torch.tensor(ODD.mean)[:, None, None]) / torch.tensor(ODD.std)[:, None, None]
    assert torch.allclose(cropped.seen[0][0], expected, atol=1e-5)


def test_synthdet_predict_reads_the_loaded_detectors_data_config(tmp_path, monkeypatch):
    img = noise_image(4, (30, 30))
    img.save(tmp_path / "a.png")
    net = create_detector("resnet18", img_size=24).eval()
    checkpoint.save({"model": net.state_dict(), "config": {"model": "resnet18", "input_size": 24}}, tmp_path / "d.pt")
    monkeypatch.setattr(TimmDetector, "data_config", ODD)
    out = predict_files([tmp_path / "a.png"], tmp_path / "d.pt", device="cpu", num_workers=0)
    with torch.no_grad():
        expected = torch.sigmoid(net(_by_hand(img, 24, ODD)[None])).item()
    assert out["fake_probability"].iloc[0] == pytest.approx(expected, abs=1e-5)


def test_imaginet_baseline_normalises_with_the_networks_data_config(tmp_path):
    img = noise_image(5, (40, 40))
    path = tmp_path / "b.png"
    img.save(path)
    rows = pd.DataFrame({"path": [str(path)], "label": [0], "m": [""]})
    data = dataclasses.replace(ODD, interpolation="bilinear")
    x, *_ = AugmentedRows(rows, {}, lambda im, rng, size: (centre_crop(im, size), []), 32, 0, "m", data)[0]
    crop = torch.from_numpy(np.array(centre_crop(img, 32))).permute(2, 0, 1).float() / 255
    assert torch.allclose(x, (crop - torch.tensor(data.mean)[:, None, None]) / torch.tensor(data.std)[:, None, None],
                          atol=1e-5)
