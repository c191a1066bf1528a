"""ImagiNet's trained methods, one DVC matrix stage each:

- ``imaginet_train@<method>``: ImagiNet's baseline (``selfcon``: SelfCon pre-training, then
  calibration of the origin and model-identification heads) or a cross-entropy comparison row of
  Table 3 (``grag2021``, ``corvi2022``), on the same rows, crops and backbone
  (:mod:`synthdet.imaginet.baseline`), in the one training loop: its checkpoints persist, so a
  rerun after a kill continues from the last finished epoch; then scored on the test set: the
  baseline's two tracks under every condition of Figure 4 (and its backbone's features of the
  clean test set, for Figure 2), the comparison rows on the clean test set (Table 3).
- ``imaginet_loco@<content>``: Figure 3, a ResNet-18 from scratch trained without one content
  type, every model on the same number of images; scored on the clean test set.

A run's folder is ``artifacts/imaginet/<family>/<item>`` (:func:`run_dir`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from synthdet.fsutil import make_owned_dir, replace_owned_dir, write_json
from synthdet.imaginet import baseline
from synthdet.imaginet.augment import condition_names, condition_transform
from synthdet.stages import imaginet_data, paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.training import checkpoint, scoring
from synthdet.training.checkpoint import load_detector
from synthdet.training.config import TrainConfig, checked_train_settings
from synthdet.training.loop import train_detector
from synthdet.training.runtime import resolve_device

SCORES, FEATURES, DETECTOR = "scores.parquet", "features.npy", "detector.pt"


def run_dir(family: str, item: str) -> str:
    """``artifacts/imaginet/<family>/<item>``, also with DVC's ``${...}`` as the item."""
    return f"{imaginet_data.ROOT}/{family}/{item}"


def _checkpoints(family: str, item: str) -> str:
    return f"{paths.RUN_CHECKPOINTS}/imaginet/{family}/{item}"


TRAIN_PARAMS = ("seed", "imaginet.baseline", "imaginet.conditions", "evaluate.batch_size", "device",
                "train.resume_every_s")  # how often the loop writes its resume state, as for every run
LOCO_PARAMS = ("seed", "imaginet.loco", "train", "evaluate.batch_size", "evaluate.num_workers", "device")
STAGES = (
    Stage(name="imaginet_train", notebook="notebooks/10_imaginet_run.ipynb", module=__name__, params=TRAIN_PARAMS,
          deps=(imaginet_data.ROWS,),
          outs=(Out(run_dir("train", "${item.method}")),
                Out(_checkpoints("train", "${item.method}"), cache=False, persist=True)),
          matrix=(("method", "imaginet.methods"),), arguments=(("family", "train"),),
          report="reports/imaginet/train/${item.method}.ipynb",
          detectors=()),  # ImagiNet's networks: selfcon.py, which baseline.py imports itself
    Stage(name="imaginet_loco", notebook="notebooks/10_imaginet_run.ipynb", module=__name__, params=LOCO_PARAMS,
          deps=(imaginet_data.ROWS,),
          outs=(Out(run_dir("loco", "${item.content}")),
                Out(_checkpoints("loco", "${item.content}"), cache=False, persist=True)),
          matrix=(("content", "imaginet.loco.contents"),), arguments=(("family", "loco"),),
          report="reports/imaginet/loco/${item.content}.ipynb", detectors=("${imaginet.loco.model}",)),
)


@dataclass(frozen=True)
class TrainRunConfig:
    method: str
    baseline: baseline.BaselineConfig
    conditions: list[str]
    batch_size: int
    device: str
    resume_every_s: float

    @classmethod
    def from_params(cls, params: dict, method: str) -> TrainRunConfig:
        if method not in baseline.METHODS:
            raise ValueError(f"imaginet.methods: unknown method {method!r} (known: {list(baseline.METHODS)})")
        p = select(params, TRAIN_PARAMS)
        c = p["imaginet"]["conditions"]
        return cls(method, baseline.BaselineConfig.from_params(dict(p["imaginet"]["baseline"]), int(p["seed"])),
                   condition_names(list(c["jpeg_quality"]), list(c["zoom"])), int(p["evaluate"]["batch_size"]),
                   str(p["device"]), p["train"]["resume_every_s"])


@dataclass(frozen=True)
class LocoConfig:
    content: str
    seed: int
    model: str
    families: tuple[str, ...] | None
    train_images: int
    train: dict
    batch_size: int
    num_workers: int | str
    device: str

    @classmethod
    def from_params(cls, params: dict, content: str) -> LocoConfig:
        p = select(params, LOCO_PARAMS)
        loco = p["imaginet"]["loco"]
        train = checked_train_settings({**p["train"], "epochs": loco["epochs"]})
        families = tuple(loco["families"]) if loco["families"] else None
        return cls(content, int(p["seed"]), str(loco["model"]), families, int(loco["train_images"]), train,
                   int(p["evaluate"]["batch_size"]), p["evaluate"]["num_workers"], str(p["device"]))


class Config:
    """Either family's configuration, by stage name and matrix item (what :func:`run` builds)."""

    @staticmethod
    def from_params(params: dict, stage: str, method: str | None = None,
                    content: str | None = None) -> TrainRunConfig | LocoConfig:
        if stage == "imaginet_train" and method:
            return TrainRunConfig.from_params(params, method)
        if stage == "imaginet_loco" and content:
            return LocoConfig.from_params(params, content)
        raise ValueError(f"an ImagiNet run needs imaginet_train with a method or imaginet_loco with a content type, "
                         f"not {stage!r} with method={method!r}, content={content!r}")


def read_rows() -> pd.DataFrame:
    return pd.read_parquet(imaginet_data.ROWS)


def train_method(params: dict, method: str) -> Result:
    cfg = TrainRunConfig.from_params(params, method)
    out = replace_owned_dir(Path(run_dir("train", method)))
    rows = read_rows()
    train, calibration, test = (rows[rows["split"] == s] for s in ("train", "calibration", "test"))
    checkpoints = Path(_checkpoints("train", method))
    if not checkpoints.exists():
        make_owned_dir(checkpoints)
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    result = baseline.train_method(method, train, calibration, cfg.baseline, out, checkpoints, device, release=False,
                                   resume_every_s=cfg.resume_every_s)
    seconds = round(time.perf_counter() - t0, 1)
    net, saved = load_detector(out / DETECTOR, device)  # the tables score what was saved
    frames = []
    for condition in cfg.conditions if method == "selfcon" else ["clean"]:  # Figure 4 is the baseline's
        # the perturbed conditions are Figure 4's, model identification: synthetic images only
        rows_ = test if condition == "clean" else test[test["label"] == 1]
        scored, features = scoring.score(net, rows_, input_size=saved["input_size"], classes=saved["model_classes"],
                                         image_transform=condition_transform(condition, cfg.baseline.calibration_size),
                                         features=True, batch_size=cfg.batch_size, device=device,
                                         desc=f"{method} {condition}")
        if condition == "clean":
            np.save(out / FEATURES, features.astype(np.float32))
        frames.append(rows_.reset_index(drop=True).assign(condition=condition).join(
            scored.drop(columns="path").rename(columns={"fake_probability": "p_synthetic"})))
    scores = pd.concat(frames, ignore_index=True).assign(method=method)
    scores.to_parquet(out / SCORES, index=False)
    history = pd.DataFrame(result["history"])
    calibration_history = result["calibration"].get("calibration_history")
    metrics = {"method": method, "seconds": seconds, "model_classes": saved["model_classes"],
               "train_images": len(train), "calibration_images": len(calibration), "test_images": len(test),
               "config": asdict(cfg.baseline)}
    write_json(metrics, out / "metrics.json")
    checkpoint.release_resume_state(checkpoints)  # the outputs are complete: a crash before kept the training
    return Result(tables={"training": history, **({"calibration": pd.DataFrame(calibration_history)}
                                                   if calibration_history else {})}, metrics=metrics)


def loco_rows(train: pd.DataFrame, content: str, n: int, seed: int,
              families: tuple[str, ...] | None = None) -> pd.DataFrame:
    """``n`` training images (half real, half synthetic of ``families``, default all) of every
    content type but ``content``: the same number for every excluded type, so only what is left
    out differs."""
    allowed = (train["label"] == 0) | train["family"].isin(families or train["family"])
    kept = train[(train["content"] != content) & allowed]
    per_label = n // 2
    counts = kept["label"].value_counts()
    short = {label: int(counts.get(label, 0)) for label in (0, 1) if counts.get(label, 0) < per_label}
    if short:
        raise ValueError(f"imaginet.loco.train_images = {n}: without {content!r} the training rows hold only "
                         f"{short} images of label(s) {sorted(short)}; lower it")
    return pd.concat([g.sample(n=per_label, random_state=seed) for _, g in kept.groupby("label")])


def train_loco(params: dict, content: str) -> Result:
    cfg = LocoConfig.from_params(params, content)
    out = replace_owned_dir(Path(run_dir("loco", content)))
    checkpoints = Path(_checkpoints("loco", content))
    if not checkpoints.exists():
        make_owned_dir(checkpoints)
    rows = read_rows()
    test = rows[rows["split"] == "test"]
    if content not in set(rows["content"]) or set(rows.loc[rows["content"] != content, "label"]) != {0, 1}:
        # GenImage is photos only: nothing to leave out (or nothing left); an empty run, said so
        reason = (f"the data has no {content!r} images (content types: {sorted(set(rows['content']))})"
                  if content not in set(rows["content"]) else f"without {content!r} one label has no images")
        test.iloc[0:0].assign(score=[], excluded=[], train_images=[]).to_parquet(out / SCORES, index=False)
        write_json({"excluded": content, "skipped": reason}, out / "metrics.json")
        return Result(metrics={"skipped": reason}, notes=[f"not trained: {reason}"])
    train = loco_rows(rows[rows["split"] == "train"], content, cfg.train_images, cfg.seed, cfg.families)
    tc = TrainConfig(model=cfg.model, seed=cfg.seed, **cfg.train)
    result = train_detector(train, rows[rows["split"] == "calibration"], tc, out, checkpoints, cfg.device,
                            release=False)
    scored = scoring.score(out / "detector.pt", test, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                           device=cfg.device, desc=f"without {content}")
    scores = test.reset_index(drop=True).assign(score=scored["fake_probability"], model=scored["model"],
                                                excluded=content, train_images=len(train))
    scores.to_parquet(out / SCORES, index=False)
    metrics = {"excluded": content, "train_images": len(train), "best_epoch": result["best_epoch"]}
    write_json(metrics, out / "metrics.json")
    checkpoint.release_resume_state(checkpoints)
    return Result(tables={"training history": pd.DataFrame(result["history"])}, metrics=metrics)


def run(params: dict, family: str, method: str | None = None, content: str | None = None) -> Result:
    """One run: ``family`` train (``method``) or loco (``content``)."""
    cfg = Config.from_params(params, f"imaginet_{family}", method, content)
    return train_method(params, cfg.method) if isinstance(cfg, TrainRunConfig) else train_loco(params, cfg.content)
