import re

import pandas as pd
import pytest

from synthdet.data.manifest import LayoutError
from synthdet.data.splits import (
    LeakageError,
    assign_splits,
    check_no_leaks,
    class_subset,
    find_leaks,
    group_assignment,
    parse_class_budget,
)
from synthdet.genimage.layout import index_genimage_tree
from synthdet.stages.download import download_genimage
from tests.conftest import make_genimage_tree


def test_genimage_layout_is_indexed_with_labels_and_file_facts(tmp_path):
    root = make_genimage_tree(tmp_path / "gi")
    df = index_genimage_tree(root)
    assert len(df) == 2 * 2 * 2 * 4
    assert set(df["split"]) == {"train", "test"}  # GenImage's val is the test set
    nature = df[df["path"].str.contains("/nature/")]
    assert (nature["label"] == 0).all() and (df.loc[~df.index.isin(nature.index), "label"] == 1).all()
    assert set(nature["format"]) == {"JPEG"} and nature["jpeg_quality"].between(74, 76).all()
    assert df["path"].str.endswith(".PNG").any()  # upper-case extensions are images too
    assert (df["status"] == "ok").all() and df["sha256"].str.len().eq(64).all()


def test_bad_files_in_a_tree_are_marked_not_dropped(tmp_path):
    root = make_genimage_tree(tmp_path / "gi", subsets=("imagenet_ai_0508_adm",))
    (root / "imagenet_ai_0508_adm/train/ai/empty.png").write_bytes(b"")
    jpg = next((root / "imagenet_ai_0508_adm/val/nature").glob("*.JPEG"))
    jpg.write_bytes(jpg.read_bytes()[:300])
    df = index_genimage_tree(root)
    status = df.set_index(df["path"].str.rsplit("/", n=1).str[-1])["status"]
    assert status["empty.png"] == "empty" and status[jpg.name] == "corrupt"
    assert (df["status"] == "ok").sum() == len(df) - 2


def test_jfif_and_avif_images_are_indexed_and_other_files_are_reported(tmp_path, caplog):
    """A GenImage tree may hold JPEGs named .jfif and AVIF files: both are images here. Any other
    file is left out with a warning that counts and names it (was silent)."""
    from tests.conftest import noise_image

    root = make_genimage_tree(tmp_path / "gi", subsets=("imagenet_ai_0508_adm",))
    folder = root / "imagenet_ai_0508_adm/train/ai"
    noise_image(0, (32, 32)).save(folder / "a.jfif", format="JPEG")
    noise_image(1, (32, 32)).save(folder / "b.avif", format="AVIF")
    (folder / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING"):
        df = index_genimage_tree(root)
    formats = df.set_index(df["path"].str.rsplit("/", n=1).str[-1])[["format", "status"]]
    assert formats.loc["a.jfif"].tolist() == ["JPEG", "ok"] and formats.loc["b.avif"].tolist() == ["AVIF", "ok"]
    assert "notes.txt" not in formats.index
    assert re.search(r"1 files left out, not images by their suffix \(\.txt;.*notes\.txt", caplog.text)


def test_a_file_gone_before_it_is_read_is_missing_not_unreadable(tmp_path):
    """A listed file that is gone when it is read (deleted, a dangling link) is ``missing``, as
    the image reader calls it, and the other reasons keep their names."""
    from synthdet.data.manifest import describe_files

    (tmp_path / "ok.png").write_bytes(b"")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "folder.png").mkdir()
    rows = describe_files([tmp_path / n for n in ("gone.png", "dangling.png", "ok.png", "folder.png")], workers=1)
    assert [r["status"] for r in rows] == ["missing", "missing", "empty", "unreadable"]
    assert rows[0]["error"] == "file does not exist" and rows[0]["sha256"] is None


def test_wrong_layout_names_what_was_expected(tmp_path):
    (tmp_path / "gi/imagenet_glide/train/ai").mkdir(parents=True)
    with pytest.raises(LayoutError, match=r"train/nature.*expected"):
        index_genimage_tree(tmp_path / "gi")
    with pytest.raises(LayoutError, match="not found"):
        index_genimage_tree(tmp_path / "gi", ["imagenet_midjourney"])
    with pytest.raises(LayoutError, match="does not exist"):
        index_genimage_tree(tmp_path / "nowhere")


def test_genimage_download_groups_imagenet_reals_by_file(tmp_path):
    root = make_genimage_tree(tmp_path / "gi")
    df = download_genimage(root, tmp_path / "out", None)
    reals = df[df.label == 0]
    assert reals["class"].str.match(r"n\d{8}").all()
    assert (tmp_path / "out/manifest.parquet").exists()


def _frame(n_groups=50, per_group=3):
    rows = [{"path": f"g{g}_{k}.png", "group": f"g{g}", "sha256": f"{g}-{k}", "split": "train", "label": g % 2,
             "subset": "s"} for g in range(n_groups) for k in range(per_group)]
    return pd.DataFrame(rows)


def test_group_assignment_is_seeded_stable_and_grouped():
    df = _frame()
    a = assign_splits(df, 0.2, seed=0)
    assert a.equals(assign_splits(df, 0.2, seed=0))
    assert not a.equals(assign_splits(df, 0.2, seed=1))
    assert a.groupby("group")["split"].nunique().max() == 1
    assert 0.05 < (a["split"] == "val").mean() < 0.4
    # adding groups never moves existing ones
    bigger = group_assignment(pd.Series([f"g{i}" for i in range(80)]), 0.2, 0, "val")
    assert (bigger[:50].to_numpy() == group_assignment(pd.Series([f"g{i}" for i in range(50)]), 0.2, 0, "val")
            .to_numpy()).all()


def test_leaks_are_found_and_refused_or_dropped():
    df = assign_splits(_frame(), 0.3, seed=0)
    assert find_leaks(df).empty
    leaky = df.copy()
    val_row = leaky.index[leaky["split"] == "val"][0]
    leaky.loc[val_row, "sha256"] = leaky.loc[leaky["split"] == "train", "sha256"].iloc[0]
    with pytest.raises(LeakageError, match="sha256"):
        check_no_leaks(leaky, "error")
    kept = check_no_leaks(leaky, "drop")
    assert len(kept) == len(leaky) - 2 and find_leaks(kept).empty


def test_calibration_may_share_training_images_but_not_test_images():
    df = assign_splits(_frame(), 0.3, seed=0)
    df.loc[df["group"] == "g0", "split"] = "test"
    train_row = df.index[df["split"] == "train"][0]
    calib = df.loc[[train_row]].assign(split="calibration", path="calib.png")  # ImagiNet's calibration set
    assert find_leaks(pd.concat([df, calib])).empty
    test_sha = df.loc[df["split"] == "test", "sha256"].iloc[0]
    assert len(find_leaks(pd.concat([df, calib.assign(sha256=test_sha, group="other")]))) == 2


def test_a_group_shared_across_splits_is_a_leak_even_with_distinct_files():
    df = assign_splits(_frame(), 0.3, seed=0)
    leaky = df.copy()
    val_row = leaky.index[leaky["split"] == "val"][0]
    # another crop of a train picture: other bytes, same group
    leaky.loc[val_row, "group"] = leaky.loc[leaky["split"] == "train", "group"].iloc[0]
    assert leaky["sha256"].is_unique
    with pytest.raises(LeakageError, match="group"):
        check_no_leaks(leaky, "error")
    kept = check_no_leaks(leaky, "drop")
    assert find_leaks(kept).empty and val_row not in kept.index


def test_calibration_images_are_never_moved_into_val():
    df = _frame(n_groups=20)
    shared = df[df["group"].isin(["g0", "g1"])]
    calib = shared.assign(split="calibration", path=lambda d: "calib_" + d["path"])
    out = assign_splits(pd.concat([df, calib], ignore_index=True), 0.99, seed=0)  # nearly every train group to val
    assert (out.loc[out["path"].str.startswith("calib_"), "split"] == "calibration").all()
    assert (out.loc[out["group"].isin(["g0", "g1"]) & ~out["path"].str.startswith("calib_"), "split"] == "train").all()
    assert (out["split"] == "val").sum() >= 3 * 17  # the other groups did move
    assert find_leaks(out).empty


def test_class_budgets_draw_whole_classes_with_equal_real_and_fake_counts():
    rows = pd.DataFrame([{"path": f"{c}_{label}_{k}.png", "class": f"c{c}", "label": label}
                         for c in range(6) for label in (0, 1) for k in range(5 if c < 4 else 2)])
    sub = class_subset(rows, n_classes=3, per_class=4, seed=0)
    per = sub.groupby(["class", "label"]).size().unstack("label")
    assert len(per) == 3 and (per == 4).all().all()
    assert set(per.index) <= {"c0", "c1", "c2", "c3"}  # c4, c5 hold only 2 images per label
    assert sub.equals(class_subset(rows, 3, 4, seed=0))
    assert any(not class_subset(rows, 3, 4, seed=s).equals(sub) for s in range(1, 6))
    with pytest.raises(ValueError, match="only 4 classes have 4 real and 4 fake"):
        class_subset(rows, 5, 4, seed=0)
    assert parse_class_budget("8x20") == (8, 20)
    for bad in ("8", "8x0", "axb"):
        with pytest.raises(ValueError, match="class budget"):
            parse_class_budget(bad)


def test_a_class_budget_draws_distinct_images_of_classes_with_enough_of_both_labels():
    # c0-c3: 5 reals and 5 fakes; c4: 9 reals but 1 fake, so it cannot give 4 of each
    rows = pd.DataFrame([{"path": f"{c}_{label}_{k}.png", "class": f"c{c}", "label": label}
                         for c in range(5) for label in (0, 1) for k in range(1 if (c, label) == (4, 1) else
                                                                             9 if c == 4 else 5)])
    for seed in range(8):
        sub = class_subset(rows, n_classes=4, per_class=4, seed=seed)
        assert set(sub["class"]) == {"c0", "c1", "c2", "c3"} and sub["path"].is_unique
        whole = class_subset(rows, n_classes=2, per_class=5, seed=seed)  # every image of each drawn class, once
        assert len(whole) == 20 and whole["path"].is_unique


def test_ungrouped_images_are_each_their_own_group_in_the_val_split():
    """Rows without a group (a dataset that names none) are carved into val one by one, not as one
    block: about ``val_fraction`` of them move."""
    df = pd.DataFrame({"path": [f"img_{i}.png" for i in range(400)], "split": "train", "group": None,
                       "sha256": [f"h{i}" for i in range(400)]})
    for seed in range(3):
        moved = (assign_splits(df, 0.25, seed=seed)["split"] == "val").sum()
        assert 60 < moved < 140


def test_fake_class_indices_map_to_imagenet_synsets():
    from synthdet.genimage.layout import image_class

    assert image_class("n03495258_20762.JPEG") == "n03495258"  # reals carry the synset
    assert image_class("000_sdv4_00134.png") == "n01440764"  # index 0: tench
    assert image_class("207_adm_11.PNG") == "n02099601"  # index 207: golden retriever
    assert image_class("GLIDE_1000_200_08_999_glide_00033.png") == "n15075141"  # index 999: toilet tissue
    assert image_class("photo.png") is None and image_class("n0349_1.JPEG") is None
