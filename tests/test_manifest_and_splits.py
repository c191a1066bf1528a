import pandas as pd
import pytest

from synthdet.data.manifest import LayoutError, index_genimage_tree
from synthdet.data.splits import LeakageError, assign_splits, check_no_leaks, find_leaks, group_assignment
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
