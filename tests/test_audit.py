"""The bias audit (file facts, shortcut probes, counterfactual re-scoring), the embedded benchmark's
biased variant and GenImage's debiased protocol, on small fabricated data with known biases."""

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter

from synthdet.analysis import audit, sharpness
from synthdet.data.dataset import DataConfig, make_transform
from synthdet.data.manifest import describe_files, normalise
from synthdet.datasets.embedded.biased import write_biased_variant, write_variant
from synthdet.genimage.layout import index_genimage_tree
from synthdet.metrics import expected_calibration_error, fit_temperature, select_temperature, sigmoid
from synthdet.training.config import TrainConfig
from synthdet.training.loop import train_detector
from synthdet.transforms.debias import DebiasConfig, prepare, select_rows
from tests.conftest import noise_image


def _manifest(root: Path, n: int, real_save: dict, fake_save: dict, blur_fakes: float = 0.0,
              real_size: int = 64, fake_size: int = 64, subset: str = "gen") -> pd.DataFrame:
    """``n`` reals and ``n`` fakes from the same noise process, saved with the given PIL options;
    fakes optionally blurred. Every image its own group; classes alternate 0/1."""
    rows = []
    for i in range(2 * n):
        label = i % 2
        img = noise_image(1000 * label + i, (real_size, real_size) if label == 0 else (fake_size, fake_size))
        if label and blur_fakes:
            img = img.filter(ImageFilter.GaussianBlur(blur_fakes))
        save = fake_save if label else real_save
        path = root / subset / f"{i:04d}.{save.get('format', 'PNG').lower()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **save)
        rows.append({"path": path.as_posix(), "label": label, "subset": subset, "group": path.as_posix(),
                     "class": str(i // 2 % 2), "split": ("train", "val", "test")[i // 2 % 3]})
    facts = describe_files([Path(r["path"]) for r in rows])
    return normalise(pd.DataFrame([{**r, **f} for r, f in zip(rows, facts, strict=True)]))


def test_the_metadata_probe_finds_genimages_format_and_size_bias_and_nothing_where_there_is_none(tmp_path):
    biased = _manifest(tmp_path / "b", 60, {"format": "JPEG", "quality": 96}, {"format": "PNG"}, fake_size=48)
    clean = _manifest(tmp_path / "c", 60, {"format": "PNG"}, {"format": "PNG"})
    scores = {name: audit.shortcut_probes(m, 32, seed=0).set_index("subset").loc["gen"]
              for name, m in (("biased", biased), ("clean", clean))}
    assert scores["biased"]["metadata"] > 0.99
    assert scores["clean"]["metadata"] == 0.5  # identical file facts: nothing to learn
    facts = audit.file_facts(biased).set_index("label")
    assert facts.loc["real", "format"] == "JPEG 100%" and facts.loc["real", "jpeg_quality_mode"] == 96
    assert facts.loc["real", "subsampling"] == "4:2:0 100%" and facts.loc["fake", "size"] == "48x48 100%"


def test_the_low_level_probe_separates_blurred_fakes_and_not_the_same_process(tmp_path):
    blurred = _manifest(tmp_path / "b", 60, {"format": "PNG"}, {"format": "PNG"}, blur_fakes=1.5)
    same = _manifest(tmp_path / "s", 60, {"format": "PNG"}, {"format": "PNG"})
    blurred_scores = audit.shortcut_probes(blurred, 64, seed=0).iloc[0]
    same_scores = audit.shortcut_probes(same, 64, seed=0).iloc[0]
    assert blurred_scores["low-level"] > 0.95
    assert blurred_scores["most telling statistic"] in ("laplacian_var", "high_freq_share", "contrast")
    assert abs(same_scores["low-level"] - 0.5) < 0.2
    # too few images per label: no score rather than one that follows the folds' priors
    assert np.isnan(audit.shortcut_probes(same, 64, seed=0, min_images=61).iloc[0]["metadata"])


def test_the_probes_folds_keep_each_source_on_one_side_and_a_memorised_source_tells_nothing():
    """Crops of one source never straddle a fold: a probe that can only memorise which source an
    image came from (its feature is the source's id, the labels random per source) scores chance."""
    rng = np.random.default_rng(0)
    groups = np.repeat([f"src{k}" for k in range(40)], 6)  # 40 sources, 6 crops each
    labels = np.repeat(rng.permutation([0, 1] * 20), 6)
    for fit, held_out in audit.probe_folds(labels, groups, seed=0):
        assert not set(groups[fit]) & set(groups[held_out])
    source_id = pd.DataFrame({"source": np.repeat(np.arange(40), 6).astype(float)})
    assert abs(audit.probe_auc(source_id, labels, groups, seed=0) - 0.5) < 0.2


def test_a_probe_needs_the_minimum_of_each_label_and_samples_each_label_apart():
    features = pd.DataFrame({"x": np.arange(65, dtype=float)})
    labels = np.r_[np.zeros(60), np.ones(5)].astype(int)  # plenty of reals, 5 fakes
    groups = np.arange(65).astype(str)
    assert np.isnan(audit.probe_auc(features, labels, groups, seed=0, min_images=10))
    assert audit.probe_auc(features, labels, groups, seed=0, min_images=5) > 0.9
    # the pixel probe's sample: at most max_images of each label of each subset, both labels kept
    manifest = pd.DataFrame({"subset": ["a"] * 150 + ["b"] * 20, "label": [0] * 100 + [1] * 50 + [0, 1] * 10,
                             "path": [f"{k}.png" for k in range(170)]})
    sample = audit.sample_per_group(manifest, 30, seed=0)
    assert sample.groupby(["subset", "label"]).size().to_dict() == {("a", 0): 30, ("a", 1): 30, ("b", 0): 10,
                                                                    ("b", 1): 10}


def test_every_file_fact_the_audit_lists_is_a_metadata_feature(tmp_path):
    """Two labels that differ in one file fact only (format; colour mode; chroma subsampling; JPEG
    quality; size; EXIF) are told apart by the metadata features, whichever fact it is."""
    base = {"format": "PNG", "mode": "RGB", "subsampling": "", "jpeg_quality": None, "width": 64, "height": 64,
            "exif": False}
    for fact, other in (("format", "WEBP"), ("mode", "L"), ("subsampling", "4:2:0"), ("jpeg_quality", 90),
                        ("width", 48), ("exif", True)):
        manifest = pd.DataFrame([{**base, **({fact: other} if label else {})} for label in (0, 1)])
        features = audit.metadata_features(manifest)
        assert not features.iloc[0].equals(features.iloc[1]), fact


def test_counterfactual_rescoring_exposes_a_detector_that_reads_the_format(tmp_path):
    """Reals are JPEG q30, fakes PNG, both the same noise: the only cue is the compression, whose
    8x8 grid the Spec detector sees in the spectrum. With the fakes JPEG q30 too, it cannot tell
    them apart any more, and the AUC change says so."""
    rows = _manifest(tmp_path / "d", 60, {"format": "JPEG", "quality": 30}, {"format": "PNG"})
    cfg = TrainConfig(model="spec", model_kwargs={"backbone": "resnet18"}, input_size=64, epochs=8, batch_size=16,
                      num_workers=0, seed=0)
    train_detector(rows[rows["split"] != "test"], rows.iloc[:0], cfg, tmp_path / "run", device="cpu")
    table, notes = audit.counterfactual_scores(tmp_path / "run/detector.pt", rows[rows["split"] == "test"], 64, "cpu")
    table = table.set_index("condition")
    assert set(table.index) == {"as_is", "fakes_jpeg_q30"}
    assert table.loc["as_is", "auc"] > 0.9
    assert table.loc["fakes_jpeg_q30", "auc"] < 0.7 and table.loc["fakes_jpeg_q30", "auc_change"] < -0.3
    assert any("no size counterfactual" in n for n in notes)


class _ReadsOneCue(torch.nn.Module):
    """A detector keyed on one cue, no learning: the grey view's mean absolute Laplacian (low means
    fake) or the view's blue minus red (high means fake), against a threshold set on training views."""

    def __init__(self, cue: str) -> None:
        super().__init__()
        self.cue, self.data_config, self.threshold = cue, DataConfig(), 0.0

    def value(self, x: torch.Tensor) -> torch.Tensor:
        if self.cue == "colour":
            return (x[:, 2] - x[:, 0]).mean(dim=(1, 2))
        kernel = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
        return -torch.nn.functional.conv2d(x.mean(dim=1, keepdim=True), kernel).abs().mean(dim=(1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50 * (self.value(x) - self.threshold)

    def fit(self, rows: pd.DataFrame, size: int) -> "_ReadsOneCue":
        transform = make_transform(size, train=False, data=self.data_config)
        with torch.no_grad():
            values = [self.value(transform(Image.open(p).convert("RGB"))[None]).item() for p in rows["path"]]
        by_label = pd.Series(values).groupby(rows["label"].to_numpy()).median()
        self.threshold = float(by_label.mean())
        return self


def _textures(root: Path, n: int, blur_fakes: float = 0.0, tint: bool = False, spread: bool = False) -> pd.DataFrame:
    """Reals and fakes of one fine-grained noise process (64 px): the fakes blurred (``spread``: each
    by its own strength, 0.3 to 1.7 times ``blur_fakes``, as a generator's outputs vary, and the
    reals by up to a third of it, as photographs do), or both of one sharpness with a colour cast
    each (reals reddish, fakes bluish), nothing else different."""
    rows = _manifest(root, n, {"format": "PNG"}, {"format": "PNG"})
    for r in rows.itertuples():
        # seeded by the file's place in this tree, not its absolute path (pytest's folder changes from run
        # to run: the images, and a statistical assertion on them, would too)
        rng = np.random.default_rng(zlib.crc32(f"{root.name}/{Path(r.path).relative_to(root).as_posix()}".encode()))
        img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
        if r.label and blur_fakes:
            img = img.filter(ImageFilter.GaussianBlur(blur_fakes * (0.3 + 1.4 * rng.random() if spread else 1.0)))
        elif spread:
            img = img.filter(ImageFilter.GaussianBlur(blur_fakes * rng.random() / 3))
        if tint:
            rgb = np.asarray(img, dtype=np.float64)
            rgb[..., 0 if r.label else 2] *= 0.6
            img = Image.fromarray(rgb.astype(np.uint8))
        img.save(r.path)
    return rows


def test_the_sharpness_counterfactual_removes_what_only_sharpness_tells(tmp_path):
    """Fakes blurred, nothing else different: a detector reading sharpness is perfect as stored and
    loses its reals under the blurred-reals counterfactual and its fakes under the sharpened-fakes
    one; the strengths, chosen on the training split, close the high-frequency gap. A pair that
    differs in colour only: the matched strengths are (near) none and a colour detector keeps its
    accuracy under both."""
    blurred = _textures(tmp_path / "b", 60, blur_fakes=1.0)
    match = sharpness.match_sharpness(blurred[blurred["split"] == "train"], 64, seed=0).iloc[0]
    assert match["fake_laplacian_var"] < match["real_laplacian_var"] / 2 and match["blur_sigma"] > 0
    gap = match["real_high_freq_share"] - match["fake_high_freq_share"]
    assert abs(match["blurred_real_high_freq_share"] - match["fake_high_freq_share"]) < 0.25 * gap
    assert abs(match["sharpened_fake_high_freq_share"] - match["real_high_freq_share"]) < 0.25 * gap
    detector = _ReadsOneCue("sharpness").fit(blurred[blurred["split"] == "train"], 64)
    conditions = sharpness.conditions(pd.DataFrame([match]), 64)
    table, _ = audit.counterfactual_scores(detector, blurred[blurred["split"] == "test"], 16, "cpu",
                                           more=conditions, input_size=64)
    table = table.set_index("condition")
    assert table.loc["as_is", "acc"] == 1.0
    blur, sharpen = table.loc[sharpness.REALS_BLURRED], table.loc[sharpness.FAKES_SHARPENED]
    assert blur["real_acc"] < 0.3 and blur["fake_acc"] == 1 and sharpen["fake_acc"] < 0.3 and sharpen["real_acc"] == 1
    assert table.loc[sharpness.REALS_BLURRED, "acc_change"] < -0.35

    tinted = _textures(tmp_path / "t", 60, tint=True)
    match = sharpness.match_sharpness(tinted[tinted["split"] == "train"], 64, seed=0).iloc[0]
    assert match["blur_sigma"] <= 0.25 and match["sharpen_percent"] <= 50
    colour = _ReadsOneCue("colour").fit(tinted[tinted["split"] == "train"], 64)
    table, _ = audit.counterfactual_scores(colour, tinted[tinted["split"] == "test"], 16, "cpu", input_size=64,
                                           more=sharpness.conditions(pd.DataFrame([match]), 64))
    assert (table["acc"] == 1.0).all() and set(table["condition"]) == {"as_is", *conditions}


def _run_scores(detector: torch.nn.Module, rows: pd.DataFrame, family: str = "xgen") -> pd.DataFrame:
    """A table run's score rows (scores.parquet) of ``detector`` on ``rows`` (degraded-table rows)."""
    from synthdet.training import scoring

    scored = scoring.score(detector, rows, input_size=64, temperature=1.0, batch_size=16, device="cpu")
    return rows.assign(score=scored["fake_probability"].to_numpy(), model="cue", family=family, train_subset="gen",
                       seed=0, class_budget="full")


def test_every_table_run_scores_the_sharpness_counterfactual_the_audit_scores(tmp_path):
    """The degrade stage writes the test images the sharpness counterfactual changes (reals blurred,
    fakes sharpened, by the strengths chosen on training views) and the table runs score them: the
    tables' reliance on sharpness equals the audit's for the same detector, a sharpness detector
    loses its reals and then its fakes, a colour detector on a pair that differs in colour and
    sharpness keeps its accuracy, and a run that did not score them (the class ablations) is left
    out rather than shown unchanged."""
    from synthdet.genimage import tables as T

    for name, rows, cue in (("blurred", _textures(tmp_path / "b", 60, blur_fakes=1.0), "sharpness"),
                            ("both", _textures(tmp_path / "bt", 60, blur_fakes=1.0, tint=True), "colour"),
                            ("tinted", _textures(tmp_path / "t", 60, tint=True), "colour")):
        rows = rows.assign(generator="g", content="photo")
        train, test = rows[rows["split"] == "train"], rows[rows["split"] == "test"].reset_index(drop=True)
        match = sharpness.match_sharpness(train, 64, seed=0)
        matched = sharpness.write_matched(test, match, tmp_path / f"{name}_degrade", 64)
        strengths = match.iloc[0]
        changed = {sharpness.REALS_BLURRED: int(strengths["blur_sigma"] > 0) * (test["label"] == 0).sum(),
                   sharpness.FAKES_SHARPENED: int(strengths["sharpen_percent"] > 0) * (test["label"] == 1).sum()}
        assert matched["condition"].value_counts().reindex(list(changed), fill_value=0).to_dict() == changed
        for r in matched.head(3).itertuples():  # the stored copy is the audit's change of the clean file, losslessly
            change = (sharpness.blurred(r.effective_value, 64) if r.label == 0
                      else sharpness.sharpened(int(r.effective_value), 64))
            assert Path(r.path).resolve().is_relative_to((tmp_path / f"{name}_degrade").resolve())
            assert np.array_equal(np.asarray(Image.open(r.path)), np.asarray(change(Image.open(r.source_path))))
        detector = _ReadsOneCue(cue).fit(train, 64)
        clean = test.assign(source_path=test["path"], condition="clean")
        scores = pd.concat([_run_scores(detector, pd.concat([clean, matched], ignore_index=True)),
                            _run_scores(detector, clean, family="ablate").assign(class_budget="2x20")],
                           ignore_index=True)
        cells = T.sharpness_counterfactual(scores, n_bootstrap=0).set_index("counterfactual")
        if name == "tinted":  # one sharpness: nothing to change, and no run in the table rather than "no change"
            assert matched.empty and cells.empty
            continue
        audited, _ = audit.counterfactual_scores(detector, test, 16, "cpu", input_size=64,
                                                 more=sharpness.conditions(match, 64))
        audited = audited.set_index("condition")
        for condition in (T.AS_SCORED, sharpness.REALS_BLURRED, sharpness.FAKES_SHARPENED):
            assert cells.loc[condition, "acc"] == pytest.approx(audited.loc[condition, "acc"], abs=1e-9)
        assert cells.loc[T.AS_SCORED, "acc"] == 1.0 and len(cells) == 3  # one run: the ablation is not in it
        if cue == "sharpness":
            assert cells.loc[sharpness.REALS_BLURRED, "real_acc"] < 0.3
            assert cells.loc[sharpness.FAKES_SHARPENED, "fake_acc"] < 0.3
            assert cells.loc[sharpness.REALS_BLURRED, "acc_change"] < -0.35
        else:
            assert (cells["acc"] == 1.0).all() and (cells["acc_change"] == 0).all()
        assert sharpness.REALS_BLURRED not in set(T.degradations(scores, "gen", n_bootstrap=0)["condition"])


def test_counterfactuals_follow_the_labels_typical_files(tmp_path):
    rows = _manifest(tmp_path / "s", 4, {"format": "PNG"}, {"format": "PNG"}, fake_size=48)
    conditions, notes = audit.counterfactuals(rows)
    assert set(conditions) == {"size_swapped"} and any("no JPEG counterfactual" in n for n in notes)
    swap = conditions["size_swapped"]
    assert swap[0](Image.new("RGB", (64, 64))).size == (48, 48) and swap[1](Image.new("RGB", (48, 48))).size == (64, 64)


def test_the_biased_variant_stores_reals_as_jpeg_and_fakes_byte_for_byte_in_genimage_layout(tmp_path):
    rows = _manifest(tmp_path / "src", 6, {"format": "PNG"}, {"format": "PNG"})
    variant = write_biased_variant(rows, tmp_path / "variant", real_quality=96)
    reals, fakes = variant[variant["label"] == 0], variant[variant["label"] == 1]
    assert set(reals["format"]) == {"JPEG"} and set(reals["jpeg_quality"]) == {96}
    assert set(fakes["format"]) == {"PNG"}
    assert list(fakes["sha256"].sort_values()) == list(rows.loc[rows["label"] == 1, "sha256"].sort_values())
    assert sorted(variant["split"]) == sorted(rows["split"]) and set(variant["group"]) == set(rows["group"])
    assert all(Path(p).resolve().is_relative_to((tmp_path / "variant").resolve()) for p in variant["path"])
    tree = index_genimage_tree(tmp_path / "variant")  # GenImage's layout: val is the test split
    assert len(tree) == len(rows) and (tree["split"] == "test").sum() == (rows["split"] == "test").sum()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs/keep.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="did not create"):
        write_biased_variant(rows, tmp_path / "theirs")


def test_the_sharpness_matched_variant_blurs_each_real_to_the_fakes_distribution_and_leaves_the_probe_nothing(
        tmp_path):
    """Every split's reals blurred, each on its own, to the fakes' high-frequency share at its own
    rank among the reals (quantile mapping on the training views); its fakes, and every image of a
    subset without a match, keep their view's pixels; all PNG of one size (no file fact to read),
    splits and groups kept, in GenImage's layout. And it does what it is for: fakes blurred each by
    its own strength, which one blur of all reals cannot match (it moves the median, not the
    spread), stop being told apart from the variant's reals by the low-level probe."""
    from synthdet.data.imageio import load_rgb

    rows = _textures(tmp_path / "b", 60, blur_fakes=1.0, spread=True)
    other = _textures(tmp_path / "o", 4).assign(subset="other")  # test-only, say: no match
    match = sharpness.match_sharpness(rows[rows["split"] == "train"], 64, seed=0)
    assert list(match["subset"]) == ["gen"]
    both = pd.concat([rows, other], ignore_index=True)
    variant = sharpness.write_matched_variant(both, match, tmp_path / "variant", 64, seed=0)
    assert len(variant) == len(both) and (variant["status"] == "ok").all()
    assert set(variant["format"]) == {"PNG"} and set(variant["width"]) == set(variant["height"]) == {64}
    copies = variant.set_index("path")
    for original in both.itertuples():
        folder = {"train": "train", "val": "train", "test": "val"}[original.split]
        copy = copies.loc[(tmp_path / "variant" / original.subset / folder / ("ai" if original.label else "nature")
                           / f"{Path(original.path).stem}.png").as_posix()]
        assert (copy["split"], copy["group"], copy["label"]) == (original.split, original.group, original.label)
        sigma = float(copy["variant_blur_sigma"])
        if not (original.label == 0 and original.subset == "gen"):
            assert sigma == 0, (copy.name, sigma)
        want = np.asarray(load_rgb(original.path))  # 64 px already: the view is the image
        if sigma:
            want = np.asarray(load_rgb(original.path).filter(ImageFilter.GaussianBlur(sigma)))
        assert np.array_equal(np.asarray(load_rgb(copy.name)), want), copy.name
    reals = variant[(variant["subset"] == "gen") & (variant["label"] == 0)]
    # each its own blur, not one per subset (a real already as smooth as its draw keeps its view)
    assert reals["variant_blur_sigma"].nunique() > 5 and (reals["variant_blur_sigma"] > 0).mean() > 0.8
    assert len(index_genimage_tree(tmp_path / "variant")) == len(both)
    # the two labels' shares now follow one distribution (all splits: the draws are from the training
    # fakes, the other splits' fakes come from the same process)
    from scipy.stats import ks_2samp

    share = {label: [sharpness.share_of(load_rgb(p)) for p in g["path"]]
             for label, g in variant[variant["subset"] == "gen"].groupby("label")}
    assert ks_2samp(share[0], share[1]).pvalue > 0.05, share
    sigma = float(match.iloc[0]["blur_sigma"])  # the counterfactual's one blur of the subset, for contrast

    def one_blur(r, folder: str) -> Path:
        target = tmp_path / "one_blur" / folder / f"{Path(r.path).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        (sharpness.blurred(sigma, 64)(load_rgb(r.path)) if r.label == 0 else load_rgb(r.path)).save(target)
        return target

    single = write_variant(rows, tmp_path / "one_blur", "one blur", one_blur)
    probes = {name: audit.shortcut_probes(m[m["subset"] == "gen"], 64, seed=0).iloc[0]["low-level"]
              for name, m in (("as stored", rows), ("one blur", single), ("variant", variant))}
    assert probes["one blur"] > probes["variant"] + 0.1, probes
    assert probes["as stored"] > 0.95 and probes["variant"] < 0.7, probes


def test_the_debiased_protocol_keeps_q96_reals_in_the_window_balances_classes_and_prepares_fakes(tmp_path):
    q96 = _manifest(tmp_path / "a", 8, {"format": "JPEG", "quality": 96}, {"format": "PNG"}, real_size=64)
    q75 = _manifest(tmp_path / "b", 8, {"format": "JPEG", "quality": 75}, {"format": "PNG"}, subset="gen")
    small = _manifest(tmp_path / "c", 8, {"format": "JPEG", "quality": 96}, {"format": "PNG"}, real_size=40,
                      fake_size=40)
    rows = pd.concat([q96, q75, small], ignore_index=True)
    cfg = DebiasConfig(enabled=True, size_window=(48, 64))
    kept = select_rows(rows, cfg, seed=0)
    reals, fakes = kept[kept["label"] == 0], kept[kept["label"] == 1]
    assert set(reals["jpeg_quality"]) == {96} and (kept["width"] >= 48).all()  # q75 reals and small images go
    assert (kept.groupby("class")["label"].value_counts().unstack() == 8 // 2).all().all()  # balanced per class
    assert len(fakes) == len(reals) == 8
    assert select_rows(rows, DebiasConfig(enabled=False), seed=0) is rows
    no_reals = DebiasConfig(enabled=True, real_jpeg_quality=50, size_window=None)
    with pytest.raises(ValueError, match="no real image of the training rows is left"):
        select_rows(rows, no_reals, seed=0)
    assert select_rows(rows, no_reals, seed=0, allow_empty=True).empty  # a validation split: none, with a warning

    step = prepare(cfg)
    fake = noise_image(3, (64, 60))
    out = step(fake, 1)
    assert out.size == (48, 48)
    centre = fake.crop((8, 6, 56, 54))
    assert 0 < np.abs(np.asarray(out, float) - np.asarray(centre, float)).mean() < 8  # JPEG q96: close, not equal
    assert np.array_equal(np.asarray(step(fake, 0)), np.asarray(centre))  # reals: only the crop
    assert prepare(DebiasConfig()) is None
    with pytest.raises(ValueError, match="unknown keys"):
        DebiasConfig.from_params({"enabled": True, "size_windw": [1, 2]})
    with pytest.raises(ValueError, match="size_window"):
        DebiasConfig.from_params({"enabled": True, "size_window": [500, 400]})


def test_the_debiased_size_window_needs_both_sides_inside_it():
    """GenImage's debiased protocol keeps an image only when its width and its height are in the
    window: a wide or a tall image of either label is dropped (portrait and landscape alike)."""
    sizes = [(500, 500), (500, 300), (300, 500), (600, 500), (500, 600)]
    rows = pd.DataFrame([{"path": f"{label}_{w}x{h}.png", "label": label, "format": "PNG", "jpeg_quality": None,
                          "width": w, "height": h, "class": "c"} for label in (0, 1) for w, h in sizes])
    cfg = DebiasConfig.from_params({"enabled": True, "real_jpeg_quality": None, "size_window": [450, 550],
                                    "balance": False})
    kept = select_rows(rows, cfg, seed=0)
    assert set(zip(kept["width"], kept["height"], strict=True)) == {(500, 500)} and len(kept) == 2


def test_temperature_scaling_is_kept_only_where_it_lowers_the_held_out_calibration_error():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 2000)
    labels = (rng.random(2000) < sigmoid(logits / 3.0)).astype(int)  # overconfident by 3x
    chosen = select_temperature(logits, labels)
    assert abs(chosen["temperature"] - 3.0) < 0.4 and chosen["ece_after"] < chosen["ece_before"] / 2
    # calibrated logits with a few confident mistakes (what a small validation split looks like):
    # the NLL-optimal temperature softens every correct image to serve the mistakes
    logits = np.concatenate([rng.normal(0, 1.5, 100), np.full(10, 9.0), np.full(10, -9.0)])
    labels = np.concatenate([(rng.random(100) < sigmoid(logits[:100])).astype(int), np.ones(9), [0], np.zeros(9), [1]])
    raw = expected_calibration_error(labels, sigmoid(logits))
    naive = fit_temperature(logits, labels)
    assert naive > 1.3 and expected_calibration_error(labels, sigmoid(logits / naive)) > raw  # scaling hurts
    chosen = select_temperature(logits, labels)
    assert chosen["ece_scaled"] > raw  # and cross-validation sees it
    assert chosen["temperature"] == 1.0 and chosen["ece_after"] == chosen["ece_before"] == pytest.approx(raw)
