"""Could a detector cheat here? The file facts of every subset and label, and three shortcut probes.

GenImage's reals are ImageNet JPEGs (mostly quality 96) and its fakes PNGs of one size per
generator (Grommelt et al., "Fake or JPEG?", 2024): a detector can score well by reading the
format. The probes say how far each subset is separable without looking for a generator at all:

- **metadata**: a classifier on file facts only (format, JPEG quality, chroma subsampling, size,
  colour mode, EXIF), cross-validated; its AUC is the bias score (0.5: nothing to learn there).
- **low-level**: the same on image statistics that carry no generator fingerprint (brightness,
  contrast, saturation, coarse colour histograms, sharpness, high-frequency energy) of the
  detector's view.
- **counterfactual**: a trained detector re-scored with the shortcut removed (fakes JPEG-compressed
  at the reals' typical quality; every image brought to the other label's typical size); the
  accuracy change says how much it relied on format and size.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from synthdet.analysis import sharpness
from synthdet.data.imageio import ImageDecodeError, fit_to_input, load_rgb
from synthdet.metrics import binary_metrics
from synthdet.training import scoring
from synthdet.training.checkpoint import load_detector
from synthdet.transforms.degrade import jpeg  # 4:2:0, as ImageNet's camera files mostly are

LABEL_NAMES = {0: "real", 1: "fake"}
NO_SHARPNESS = "low-level without sharpness"  # the low-level probe without laplacian_var and high_freq_share
PROBES = ("metadata", "low-level", NO_SHARPNESS)
AS_IS_CONDITION = "as_is"
HISTOGRAM_BINS = 4  # per channel: coarse colour, no texture
MIN_PROBE_IMAGES = 50  # per label, by default: below it a score follows the folds' class priors more than
# the data (measured: 18 + 18 images with identical features gave AUC 0.43), so none is given


def _share(values: pd.Series) -> str:
    """'PNG 100%' / 'JPEG 93%, PNG 7%': the distribution of a categorical fact, largest first."""
    counts = values.fillna("none").astype(str).value_counts(normalize=True)
    return ", ".join(f"{k} {v:.0%}" for k, v in counts.head(3).items()) + (", ..." if len(counts) > 3 else "")


def file_facts(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per subset and label: how many images, and the distribution of each file fact."""
    rows = []
    for (subset, label), g in manifest.groupby(["subset", "label"], sort=True):
        quality = pd.to_numeric(g["jpeg_quality"], errors="coerce").dropna()
        sizes = g["width"].astype(str) + "x" + g["height"].astype(str)
        rows.append({
            "subset": subset, "label": LABEL_NAMES[int(label)], "images": len(g),
            "format": _share(g["format"]), "jpeg_share": float((g["format"] == "JPEG").mean()),
            "jpeg_quality_mode": int(quality.mode().iloc[0]) if len(quality) else None,
            "jpeg_quality_range": f"{int(quality.min())}-{int(quality.max())}" if len(quality) else "",
            "size": _share(sizes), "median_width": float(g["width"].median()),
            "median_height": float(g["height"].median()), "mode": _share(g["mode"]),
            "subsampling": _share(g["subsampling"].replace("", None)),
            "exif_share": float(g["exif"].fillna(False).astype(bool).mean()),
        })
    return pd.DataFrame(rows)


def metadata_features(manifest: pd.DataFrame) -> pd.DataFrame:
    """What a file says about itself, as numbers: no pixel is read."""
    width = manifest["width"].astype(float).to_numpy()
    height = manifest["height"].astype(float).to_numpy()
    numeric = pd.DataFrame({
        "jpeg_quality": pd.to_numeric(manifest["jpeg_quality"], errors="coerce").fillna(-1).astype(float).to_numpy(),
        "width": width, "height": height, "aspect": width / height,
        "exif": manifest["exif"].fillna(False).astype(float).to_numpy(),
    })
    categorical = pd.get_dummies(manifest[["format", "mode", "subsampling"]].fillna("none").astype(str).reset_index(
        drop=True), dtype=float)
    return pd.concat([numeric, categorical], axis=1)


def image_statistics(img: Image.Image) -> np.ndarray:
    """Statistics with no generator fingerprint: brightness and contrast, saturation, a coarse
    colour histogram, sharpness (variance of the Laplacian) and the share of spectral energy in
    the upper half of the frequencies."""
    rgb = np.asarray(img, dtype=np.float64) / 255.0
    g = sharpness.grey(img)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    histogram = [np.histogram(rgb[..., c], bins=HISTOGRAM_BINS, range=(0, 1))[0] / g.size for c in range(3)]
    return np.concatenate([[g.mean(), g.std(), saturation.mean(), sharpness.laplacian_variance(g),
                            sharpness.high_frequency_share(g)], *histogram])


SHARPNESS_STATISTICS = ("laplacian_var", "high_freq_share")
STATISTIC_NAMES = ["brightness", "contrast", "saturation", "laplacian_var", "high_freq_share",
                   *[f"hist_{c}{b}" for c in "rgb" for b in range(HISTOGRAM_BINS)]]


def lowlevel_features(paths: list[str], size: int, workers: int = 4) -> pd.DataFrame:
    """:func:`image_statistics` of each image as the detector sees it (``size`` px); NaN rows for
    files that cannot be decoded."""

    def one(path: str) -> np.ndarray:
        try:
            return image_statistics(fit_to_input(load_rgb(path), size))
        except ImageDecodeError:
            return np.full(len(STATISTIC_NAMES), np.nan)

    with ThreadPoolExecutor(workers) as pool:
        stats = list(tqdm(pool.map(one, paths), total=len(paths), desc="image statistics"))
    return pd.DataFrame(np.stack(stats) if stats else np.empty((0, len(STATISTIC_NAMES))), columns=STATISTIC_NAMES)


def probe_folds(labels: np.ndarray, groups: np.ndarray, seed: int, folds: int = 5) -> list[tuple[np.ndarray, ...]]:
    """The probes' cross-validation folds: stratified by label, each ``group`` (images cut from one
    source) on one side. They depend on the labels and groups only, so two probes of the same rows
    share them (the search costs more than a probe's fit on thousands of groups)."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels).astype(int), np.asarray(groups)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros((len(labels), 1)), labels, groups))


def probe_auc(features: pd.DataFrame, labels: np.ndarray, groups: np.ndarray, seed: int, folds: int = 5,
              min_images: int = MIN_PROBE_IMAGES, cv: list | None = None) -> float:
    """Cross-validated AUC of a gradient-boosted classifier predicting real vs fake from
    ``features``, over :func:`probe_folds` (``cv``: those of these very rows, computed once). NaN
    when a label has fewer than ``min_images`` images or there are fewer groups than folds."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    labels = np.asarray(labels).astype(int)
    keep = np.isfinite(features.to_numpy(dtype=float)).all(axis=1)
    x, y, g = features.to_numpy(dtype=float)[keep], labels[keep], np.asarray(groups)[keep]
    if len(np.unique(y)) < 2 or np.bincount(y).min() < min_images or len(np.unique(g)) < folds:
        return float("nan")
    model = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, min_samples_leaf=5, random_state=seed)
    if cv is None or not keep.all():  # folds of other rows do not fit these
        cv = probe_folds(y, g, seed, folds)
    scores = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def sample_per_group(manifest: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_images`` images per subset and label (seeded), so the pixel probe stays
    cheap on a 2.7M-image dataset; the metadata probe reads every row."""
    if not max_images:
        return manifest
    shuffled = manifest.sample(frac=1.0, random_state=seed)
    return shuffled.groupby(["subset", "label"], sort=False).head(max_images).sort_index()


def shortcut_probes(manifest: pd.DataFrame, input_size: int, seed: int, max_images: int | None = None,
                    folds: int = 5, min_images: int = MIN_PROBE_IMAGES) -> pd.DataFrame:
    """Per subset: the metadata and low-level probes' AUC (reals vs fakes of that subset), and the
    low-level probe's without the two sharpness statistics: what is left to read once sharpness
    tells nothing (colour, brightness, contrast), so that a probe still high on the
    sharpness-matched variant says which shortcut remains."""
    manifest = manifest.reset_index(drop=True)
    meta = metadata_features(manifest)
    sampled = sample_per_group(manifest, max_images, seed)
    stats = lowlevel_features(sampled["path"].tolist(), input_size).set_index(sampled.index)
    rows = []
    for subset, g in manifest.groupby("subset", sort=True):
        s = sampled[sampled["subset"] == subset]
        name, auc = most_telling(stats.loc[s.index], s["label"].to_numpy())
        counts = g["label"].value_counts()
        enough = len(counts) == 2 and counts.min() >= min_images and g["group"].nunique() >= folds
        cv = probe_folds(g["label"], g["group"], seed, folds) if enough else None  # both probes', when s is g
        rows.append({"subset": subset, "images": len(g),
                     "metadata": probe_auc(meta.loc[g.index], g["label"], g["group"], seed, folds, min_images, cv),
                     "low-level": probe_auc(stats.loc[s.index], s["label"], s["group"], seed, folds, min_images,
                                            cv if s.index.equals(g.index) else None),
                     NO_SHARPNESS: probe_auc(stats.loc[s.index].drop(columns=list(SHARPNESS_STATISTICS)), s["label"],
                                             s["group"], seed, folds, min_images,
                                             cv if s.index.equals(g.index) else None),
                     "most telling statistic": name, "its AUC": auc})
    return pd.DataFrame(rows)


def most_telling(features: pd.DataFrame, labels: np.ndarray) -> tuple[str, float]:
    """The single feature that best separates the labels alone, and its AUC (folded above 0.5:
    either direction counts)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return "", float("nan")
    best = ("", float("nan"))
    for name in features.columns:
        values = features[name].to_numpy(dtype=float)
        keep = np.isfinite(values)
        if len(np.unique(labels[keep])) < 2:
            continue
        auc = roc_auc_score(labels[keep], values[keep])
        auc = max(auc, 1 - auc)
        if not auc <= best[1]:  # NaN-safe: the first one wins over NaN
            best = (name, float(auc))
    return best


def typical(manifest: pd.DataFrame, label: int) -> dict:
    """The modal format, JPEG quality and size of one label's images."""
    g = manifest[manifest["label"] == label]
    quality = pd.to_numeric(g["jpeg_quality"], errors="coerce").dropna()
    size = (g["width"].astype(int).astype(str) + "x" + g["height"].astype(int).astype(str)).mode().iloc[0]
    return {"format": g["format"].mode().iloc[0], "jpeg_quality": int(quality.mode().iloc[0]) if len(quality) else None,
            "size": tuple(int(v) for v in size.split("x"))}


def _resize(size: tuple[int, int]) -> Callable[[Image.Image], Image.Image]:
    return lambda img: img if img.size == size else img.resize(size, Image.Resampling.BICUBIC)


def counterfactuals(test: pd.DataFrame) -> tuple[dict[str, dict[int, Callable]], list[str]]:
    """The re-scorings that remove a difference the two labels' files have here: condition name ->
    {label: transform applied before the detector's view}, and a note for each one not needed."""
    real, fake = typical(test, 0), typical(test, 1)
    conditions: dict[str, dict[int, Callable]] = {}
    notes = ["Reals re-saved losslessly: the detector reads decoded pixels, which a lossless re-save does not "
             "change, so that counterfactual is the identity and is not scored."]
    if real["format"] == "JPEG" and fake["format"] != "JPEG" and real["jpeg_quality"]:
        conditions[f"fakes_jpeg_q{real['jpeg_quality']}"] = {1: partial(jpeg, quality=real["jpeg_quality"])}
    else:
        notes.append(f"Format: reals are mostly {real['format']} and fakes {fake['format']}; no JPEG counterfactual.")
    if real["size"] != fake["size"]:
        conditions["size_swapped"] = {0: _resize(fake["size"]), 1: _resize(real["size"])}
    else:
        notes.append(f"Size: both labels are typically {real['size'][0]}x{real['size'][1]}; no size counterfactual.")
    return conditions, notes


def counterfactual_scores(detector: Path | nn.Module, test: pd.DataFrame, batch_size: int, device: str,
                          num_workers: int | str = 0, more: dict[str, dict] | None = None,
                          input_size: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Accuracy of ``detector`` (a ``detector.pt``, or a network viewing ``input_size`` px) per test
    subset as the files are and under each counterfactual, with the change; the notes say which
    counterfactuals did not apply. ``more``: other counterfactuals, condition -> {label or (subset,
    label): change} (the sharpness one). Images a condition leaves as they are keep their scores."""
    if isinstance(detector, nn.Module):
        model, cfg = detector, {"input_size": input_size, "temperature": 1.0}
    else:
        model, cfg = load_detector(detector, device)
    conditions, notes = counterfactuals(test)
    conditions |= more or {}
    test = test.reset_index(drop=True)

    def scored(rows: pd.DataFrame, change: Callable | None, name: str) -> np.ndarray:
        return scoring.score(model, rows, input_size=cfg["input_size"], temperature=cfg["temperature"],
                             image_transform=change, batch_size=batch_size, device=device, num_workers=num_workers,
                             channels_last=cfg.get("channels_last", True), desc=name)["fake_probability"].to_numpy()

    as_is = np.full(len(test), np.nan)
    for label in (0, 1):
        part = test[test["label"] == label]
        as_is[part.index] = scored(part, None, f"{AS_IS_CONDITION} {label}")
    rows = []
    for name, changes in ({AS_IS_CONDITION: {}} | conditions).items():
        scores = as_is.copy()
        for key, change in changes.items():
            subset, label = key if isinstance(key, tuple) else (None, key)
            part = test[(test["label"] == label) & ((test["subset"] == subset) if subset is not None else True)]
            scores[part.index] = scored(part, change, f"{name} {key}")
        for subset, g in test.assign(score=scores).dropna(subset=["score"]).groupby("subset", sort=True):
            m = binary_metrics(g["label"].to_numpy(), g["score"].to_numpy(), n_bootstrap=0)
            rows.append({"subset": subset, "condition": name, "acc": m["acc"], "real_acc": m["real_acc"],
                         "fake_acc": m["fake_acc"], "auc": m["auc"]})
    table = pd.DataFrame(rows)
    base = table[table["condition"] == AS_IS_CONDITION].set_index("subset")
    for metric in ("acc", "auc"):
        table[f"{metric}_change"] = table[metric] - table["subset"].map(base[metric])
    return table, notes
