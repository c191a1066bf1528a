"""The README's pretrained-versus-from-scratch tables, its sharpness-counterfactual table and its
sharpness-matched variant's tables (table 1 on it among them), printed from a finished `make repro`'s
outputs (``artifacts/tables/transfer.csv``, the probes' and the matched runs' ``cross_generator_*.csv``,
``metrics/tables.json``, ``metrics/audit.json``) and params.yaml (where each detector started), so
that no number in them is typed by hand.

Usage, in the workspace of that run:  python benchmarks/readme_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from synthdet.stages import paths
from synthdet.transforms.degrade import natural_order


def starts(params: dict) -> dict[str, str]:
    """Detector name in the tables -> where its weights started."""
    t = params["tables"]
    default = params["train"]["pretrained"] or "random (from scratch)"
    out = {m: default for m in [*t["xgen_models"], *t["detectors"], t["ablation_model"]]}
    for model, overrides in (t.get("train_overrides") or {}).items():
        if "pretrained" in (overrides or {}):
            out[model] = f"ImageNet ({overrides['pretrained']}), fine-tuned" if overrides["pretrained"] else default
    for backbone in params["probe"]["backbones"] or ():
        out[paths.probe_model(backbone)] = f"ImageNet ({backbone}), frozen + logistic head"
    return out


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    tables = Path(paths.TABLES)
    carry = pd.read_csv(tables / "transfer.csv")
    carry.insert(1, "start", carry["model"].map(starts(params)))
    train_subset = params["tables"]["detector_subset"]
    carry = carry.rename(columns={
        "own_acc": f"{train_subset} acc", "own_auc": f"{train_subset} AUC",
        "others_acc": "other subsets acc", "others_auc": "other subsets AUC",
        "off_diagonal_acc": "off-diagonal acc", "off_diagonal_auc": "off-diagonal AUC",
        "trained_on": "subsets trained on"})
    carry = carry.astype(object).where(carry.notna(), None)  # tabulate writes None as missingval, NaN as nan
    print(carry.to_markdown(index=False, floatfmt=".3f", missingval="-"))
    order = list(params["tables"]["subsets"])
    for title, csv, columns, col_order in (
            ("Table 2 (accuracy; rows: detector)", "detectors.csv", "subset", order),
            ("Table 3 (accuracy; rows: detector)", "degradations.csv", "condition", None),
            ("Table 6 (accuracy; rows: detector)", "content.csv", "subset", None)):
        cells = pd.read_csv(tables / csv)
        wide = cells.pivot(index="model", columns=columns, values="acc")
        if col_order:
            wide = wide.reindex(columns=col_order)
        if csv == "degradations.csv":  # the conditions in their natural order (clean, lowres, jpeg, blur)
            wide = wide[natural_order(list(wide.columns))]
            wide["Avg"] = wide.drop(columns="clean").mean(axis=1)
        elif csv == "detectors.csv":
            wide["Avg"] = wide.mean(axis=1)
        wide = wide.sort_values("Avg" if "Avg" in wide else wide.columns[0], ascending=False)
        print(f"\n{title}\n")
        print(wide.to_markdown(floatfmt=".3f"))
    for backbone in params["probe"]["backbones"] or ():
        model = paths.probe_model(backbone)
        for value in ("acc", "auc"):
            cells = pd.read_csv(tables / f"cross_generator_{model}.csv")
            wide = cells.pivot(index="train_subset", columns="subset", values=value)
            order = list(params["tables"]["subsets"])
            wide = wide.reindex(index=order, columns=order)
            wide["Avg"] = wide.mean(axis=1)
            print(f"\n{model}, {value} (rows: training subset)\n")
            print(wide.to_markdown(floatfmt=".3f"))
    print("\nSharpness counterfactual: cross-generator accuracy as scored and with the gap closed\n")
    print(survival(json.loads(Path(paths.metrics_file("tables")).read_text())).to_markdown(index=False,
                                                                                        floatfmt=".3f"))
    audit = Path(paths.metrics_file("audit"))
    variant = matched_variant(json.loads(audit.read_text())) if audit.is_file() else None
    if variant is not None:
        print("\nSharpness-matched variant: the low-level probe and the median sharpness, as stored and matched\n")
        print(variant[0].to_markdown(index=False, floatfmt=".3f"))
        print("\nTrained on each, scored on both test sets (mean over the test subsets)\n")
        print(variant[1].to_markdown(index=False, floatfmt=".3f"))
    summary = json.loads(Path(paths.metrics_file("tables")).read_text())
    for model in summary.get("matched_cross_generator", {}):  # the matched runs' models, the probes
        print(f"\nTable 1 on the sharpness-matched variant, {model} (accuracy; rows: training subset)\n")
        print(matrix(tables / f"cross_generator_matched_{model}.csv", order).to_markdown(floatfmt=".3f"))
        print(f"\nTable 1's same- and cross-generator accuracy, {model}\n")
        print(matched_table1(summary, model).to_markdown(index=False, floatfmt=".3f"))


def survival(summary: dict) -> pd.DataFrame:
    """metrics/tables.json's ``sharpness_cross_generator_acc`` as a table: mean accuracy as scored,
    with the test reals blurred and with the fakes sharpened, and the share of the accuracy above
    chance (0.5) that survives each."""
    rows = []
    for what, acc in summary["sharpness_cross_generator_acc"].items():
        above = acc["as_is"] - 0.5
        row = {"detector (test subsets)": what, "as scored": acc["as_is"],
               "reals blurred": acc.get("reals_blurred"), "fakes sharpened": acc.get("fakes_sharpened")}
        for cf in ("reals_blurred", "fakes_sharpened"):
            kept = (acc[cf] - 0.5) / above if cf in acc and above > 0 else None
            row[f"above chance kept, {cf.replace('_', ' ')}"] = None if kept is None else f"{kept:.0%}"
        rows.append(row)
    return pd.DataFrame(rows)


def matrix(csv: Path, order: list[str]) -> pd.DataFrame:
    """A table 1 long table (train_subset, subset, acc) as the paper's matrix, with its rows' mean."""
    wide = pd.read_csv(csv).pivot(index="train_subset", columns="subset", values="acc").reindex(index=order,
                                                                                                columns=order)
    wide["Avg"] = wide.mean(axis=1)
    return wide


MATCHED_ROWS = {"stored": "benchmark as stored (table 1)", "variant": "sharpness-matched variant",
                "variant_to_stored": "trained on the variant, tested as stored"}


def matched_table1(summary: dict, model: str) -> pd.DataFrame:
    """metrics/tables.json's ``matched_cross_generator`` for ``model``: same- and cross-generator
    accuracy per way of training and testing, and the share of the stored cross-generator accuracy
    above chance (0.5) that each keeps."""
    cells = summary["matched_cross_generator"][model]
    base = cells.get("stored", {}).get("cross_generator_acc")
    rows = []
    for key, label in MATCHED_ROWS.items():
        if key not in cells:
            continue
        cross = cells[key]["cross_generator_acc"]
        kept = (cross - 0.5) / (base - 0.5) if base is not None and base > 0.5 else None
        rows.append({"trained and tested on": label, "same generator": cells[key]["same_generator_acc"],
                     "cross generator": cross,
                     "cross above chance, of table 1's": None if kept is None else f"{kept:.0%}"})
    return pd.DataFrame(rows)


MATCHED = "sharpness-matched variant"


def matched_variant(audit: dict) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """metrics/audit.json's sharpness-matched variant: per subset the low-level probe's AUC (with and
    without its sharpness statistics) and the reals' and fakes' median Laplacian variance, as stored
    and on the variant; and the detectors
    trained on each, scored on both test sets. None when the run built no variant."""
    if MATCHED not in audit.get("bias_scores", {}) or "sharpness_matched" not in audit:
        return None
    rows = []
    for subset, stored in audit["bias_scores"]["as stored"].items():
        matched = audit["bias_scores"][MATCHED].get(subset, {})
        row = {"subset": subset, "low-level AUC, as stored": stored["lowlevel_auc"],
               "low-level AUC, matched": matched.get("lowlevel_auc"),
               # what is left once sharpness tells nothing: colour, brightness, contrast (older runs: -)
               "without sharpness, as stored": stored.get("lowlevel_no_sharpness_auc"),
               "without sharpness, matched": matched.get("lowlevel_no_sharpness_auc")}
        for name, label in (("as stored", "as stored"), (MATCHED, "matched")):
            m = audit["sharpness"].get(name, {}).get(subset)
            row[f"Laplacian var. real / fake, {label}"] = (
                f"{m['real_laplacian_var']:.3g} / {m['fake_laplacian_var']:.3g}" if m else "-")
        rows.append(row)
    trained = pd.DataFrame([{"trained on": name, **values} for name, values in audit["sharpness_matched"].items()])
    return pd.DataFrame(rows), trained


if __name__ == "__main__":
    main()
