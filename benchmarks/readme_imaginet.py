"""The README's ImagiNet tables (Table 3, Table 7, Figure 4, Figure 3), printed from a finished
`make repro`'s outputs (``artifacts/imaginet/tables/*.csv``, ``metrics/imaginet.json``) so that no
number in them is typed by hand. With ``--before OTHER/metrics/imaginet.json`` it also prints every
Table 3, Table 7 and Figure 4 number of that earlier run beside this one's (what a change moved).

Usage, in the workspace of that run:  python benchmarks/readme_imaginet.py [--before PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from synthdet.stages import imaginet_tables, paths


def flat(metrics: dict, keys: tuple[str, ...] = ("table3", "table7", "figure4")) -> dict[str, float]:
    """``table3/selfcon/Mean/acc`` -> value, for the parts of ``metrics/imaginet.json`` named in ``keys``."""
    out: dict[str, float] = {}

    def walk(value: object, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}/{k}" if path else str(k))
        elif isinstance(value, int | float):
            out[path] = float(value)

    for key in keys:
        walk(metrics.get(key, {}), key)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="an earlier run's metrics/imaginet.json")
    args = parser.parse_args()
    folder = Path(imaginet_tables.FOLDER)
    table3 = pd.read_csv(folder / "table3_origin.csv")
    print("Table 3 (test set, real against each family's fakes; acc = balanced accuracy at 0.5):\n")
    print(table3[["method", "family", "acc", "best_acc", "auc"]].to_markdown(index=False, floatfmt=".3f"))
    metrics = json.loads(Path(paths.metrics_file("imaginet")).read_text())
    if (folder / "table7_model_id.csv").exists():
        table7 = pd.read_csv(folder / "table7_model_id.csv").set_index("class")["acc"]
        print("\nTable 7 (model identification, synthetic test images):\n")
        row = pd.DataFrame([{**table7.to_dict(), "macro AUC": metrics["table7"]["macro_auc"]}])
        print(row.to_markdown(index=False, floatfmt=".3f"))
        figure4 = pd.read_csv(folder / "figure4_model_id_perturbed.csv")
        print("\nFigure 4 (mean model-identification accuracy):\n")
        print(figure4[["perturbation", "value", "acc"]].to_markdown(index=False, floatfmt=".3f"))
    if (folder / "figure3_leave_one_content_out.csv").exists():
        figure3 = pd.read_csv(folder / "figure3_leave_one_content_out.csv")
        for value in ("acc", "auc"):
            wide = figure3.pivot(index="excluded", columns="content", values=value)
            wide.index = [f"without {e}" for e in wide.index]
            print(f"\nFigure 3 ({value}; the held-out type on the diagonal):\n")
            print(wide.to_markdown(floatfmt=".3f"))
    if args.before:
        old, new = flat(json.loads(args.before.read_text())), flat(metrics)
        moved = pd.DataFrame([{"number": k, "before": old.get(k), "after": new.get(k)} for k in sorted(old | new)])
        print(f"\nBefore ({args.before}) and after:\n")
        print(moved.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
