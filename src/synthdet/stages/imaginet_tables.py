"""Stage ``imaginet_tables``: ImagiNet's Tables 3, 6, 7 and Figures 2, 3, 4 from the ImagiNet
runs (``imaginet_train@*``, ``imaginet_loco@*``), beside the paper's numbers (``paper/imaginet_*.csv``).

Table 6 times every registered detector and every ImagiNet method at ``imaginet.timing.size``
(448 in the paper) on this machine's CPU, with the batch size stated; these are the only numbers
of the pipeline that change from run to run. Tables 4 and 5 (zero-shot on other test sets) are
scored for every annotation file in ``imaginet.external_tests`` (ImagiNet's format, paths
relative to the file's dataset root).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from synthdet.analysis import report
from synthdet.detectors import create_detector, list_detectors
from synthdet.fsutil import replace_owned_dir, write_json
from synthdet.imaginet import baseline
from synthdet.imaginet import dataset as imaginet
from synthdet.imaginet import plots as plots_
from synthdet.imaginet import tracks as T
from synthdet.imaginet.relational import embedding_map
from synthdet.machine import machine_facts
from synthdet.stages import imaginet_data, imaginet_runs, paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.training import scoring
from synthdet.training.checkpoint import load_detector
from synthdet.training.runtime import resolve_device

FOLDER = f"{imaginet_data.ROOT}/tables"
PLOTS = f"{paths.PLOTS}/imaginet"
PAPER = {name: f"{paths.PAPER}/imaginet_{name}.csv" for name in ("table3", "table6", "table7")}
STAGE = Stage(
    name="imaginet_tables", notebook="notebooks/11_imaginet_tables.ipynb", module=__name__,
    params=("seed", "imaginet.methods", "imaginet.baseline", "imaginet.loco.contents", "imaginet.timing",
            "imaginet.embedding_map", "imaginet.external_tests", "evaluate.batch_size", "device"),
    deps=(imaginet_data.ROWS, f"{imaginet_data.ROOT}/train", f"{imaginet_data.ROOT}/loco", *PAPER.values()),
    outs=(Out(FOLDER),), metrics=(paths.metrics_file("imaginet"),), plots=(PLOTS,),
)
# the paper's names for the methods trained here ("*": trained on the data this pipeline reads)
PAPER_NAMES = {"selfcon": "Ours*", "grag2021": "Grag2021", "corvi2022": "Corvi2022*"}


@dataclass(frozen=True)
class Config:
    seed: int
    methods: tuple[str, ...]
    baseline: baseline.BaselineConfig
    contents: tuple[str, ...]
    timing: dict
    embedding: dict
    external: dict
    batch_size: int
    device: str

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        i = p["imaginet"]
        return cls(int(p["seed"]), tuple(i["methods"]), baseline.BaselineConfig.from_params(dict(i["baseline"]),
                                                                                          int(p["seed"])),
                   tuple(i["loco"]["contents"]), dict(i["timing"]), dict(i["embedding_map"]),
                   dict(i["external_tests"] or {}), int(p["evaluate"]["batch_size"]), str(p["device"]))


def _read(family: str, items: tuple[str, ...], name: str) -> list[Path]:
    paths_ = [Path(imaginet_runs.run_dir(family, item)) / name for item in items]
    missing = [p for p in paths_ if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} ImagiNet runs have no {name}, e.g. {missing[0]}; run `dvc repro` "
                                f"(the imaginet_{family} stages) first")
    return paths_


def read_paper() -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(path, comment="#") for name, path in PAPER.items()}


def timing_table(cfg: Config) -> pd.DataFrame:
    """Table 6 on this machine (the GPU when ``device`` finds one): every registered detector and
    each ImagiNet method's network."""
    t = cfg.timing
    device = resolve_device(cfg.device)
    size, batch, repeats = int(t["size"]), int(t["batch_size"]), int(t["repeats"])
    names = list(t["detectors"]) if t.get("detectors") else list_detectors()
    rows = []
    for name in names:
        net = create_detector(name, img_size=size)
        rows.append({"network": name, "ms_per_image": T.inference_ms(net, size, batch, repeats, device=device)})
    for method in cfg.methods:
        net, _ = load_detector(Path(imaginet_runs.run_dir("train", method)) / imaginet_runs.DETECTOR)
        rows.append({"network": f"{method} ({cfg.baseline.backbone}{'-nodown' if cfg.baseline.nodown else ''})",
                     "ms_per_image": T.inference_ms(net, size, batch, repeats, device=device)})
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        facts = machine_facts()
        name = f"{facts['cpu']}, {torch.get_num_threads()} threads"
    return pd.DataFrame(rows).assign(size=size, batch_size=batch, device=name)


def external_tables(cfg: Config) -> pd.DataFrame:
    """Tables 4-5: every method scored on every external annotation file (origin track)."""
    frames = []
    for name, annotation in cfg.external.items():
        path = Path(annotation)
        table = imaginet.read_annotations(path)
        root = path.parent.parent if path.parent.name == "annotations" else path.parent
        table = table.assign(path=[(root / r).as_posix() for r in table["relpath"]])
        for method in cfg.methods:
            scored = scoring.score(Path(imaginet_runs.run_dir("train", method)) / imaginet_runs.DETECTOR, table,
                                   batch_size=cfg.batch_size, device=cfg.device, desc=f"{method} on {name}")
            frames.append(table.assign(p_synthetic=scored["fake_probability"].to_numpy(), method=method,
                                       test_set=name))
    if not frames:
        return pd.DataFrame()
    return pd.concat([T.origin_table(g).assign(test_set=name) for name, g in pd.concat(frames).groupby("test_set")])


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    out, plots = replace_owned_dir(Path(FOLDER)), Path(PLOTS)
    plots.mkdir(parents=True, exist_ok=True)
    scores = pd.concat([pd.read_parquet(p) for p in _read("train", cfg.methods, imaginet_runs.SCORES)],
                       ignore_index=True)
    paper = read_paper()
    clean = scores[scores["condition"] == "clean"]
    table3 = T.origin_table(clean).assign(paper_name=lambda d: d["method"].map(PAPER_NAMES))
    table3.to_csv(out / "table3_origin.csv", index=False)
    metrics: dict = {"table3": {m: {r.family: {"acc": r.acc, "best_acc": r.best_acc, "auc": r.auc}
                                    for r in g.itertuples()} for m, g in table3.groupby("method")}}
    figures = {"Table 3: balanced accuracy at 0.5, per family": report.bars(
        table3, "family", "acc", "method", "Table 3: real vs synthetic (balanced accuracy at 0.5)",
        plots / "table3_origin.png", ylim=(0, 1.02), reference=0.5)}
    tables = {"Table 3 (this run)": table3.round(3), "Table 3 (paper)": paper["table3"]}

    if "selfcon" in cfg.methods:
        selfcon = scores[scores["method"] == "selfcon"]
        saved = load_detector(Path(imaginet_runs.run_dir("train", "selfcon")) / imaginet_runs.DETECTOR)[1]
        classes, truth = saved["model_classes"], cfg.baseline.model_labels
        table7, auc = T.model_id_table(selfcon[selfcon["condition"] == "clean"], classes, truth)
        table7.to_csv(out / "table7_model_id.csv", index=False)
        figure4 = T.model_id_under(selfcon, truth)
        figure4.to_csv(out / "figure4_model_id_perturbed.csv", index=False)
        metrics["table7"] = {"acc": dict(zip(table7["class"], table7["acc"], strict=True)), "macro_auc": auc}
        metrics["figure4"] = {r.condition: r.acc for r in figure4.itertuples() if r.condition != "clean"}
        tables |= {"Table 7 (this run): model identification": table7.round(3), "Table 7 macro AUC": auc,
                   "Table 7 (paper)": paper["table7"]}
        figures["Figure 4: model identification under perturbations"] = plots_.facet_lines(
            figure4, "value", "acc", "perturbation", "Figure 4: model identification accuracy",
            plots / "figure4_model_id_perturbed.png")
        # Figure 2: the backbone's features of the clean test set, mapped to 2-D
        features = np.load(Path(imaginet_runs.run_dir("train", "selfcon")) / imaginet_runs.FEATURES)
        test = selfcon[selfcon["condition"] == "clean"].reset_index(drop=True)
        keep = np.random.default_rng(cfg.seed).permutation(len(test))[: int(cfg.embedding["max_images"])]
        keep.sort()
        mapped = embedding_map(features[keep], [float(a) for a in cfg.embedding["alphas"]],
                               int(cfg.embedding["steps"]), seed=cfg.seed)
        points = test.iloc[keep][["path", "label", "content", "family", "generator"]].assign(
            x=mapped.coordinates[:, 0], y=mapped.coordinates[:, 1],
            origin=lambda d: d["label"].map({0: "real", 1: "synthetic"}))
        points.to_csv(out / "figure2_map.csv", index=False)
        pd.DataFrame(mapped.search).to_csv(out / "figure2_alpha_search.csv", index=False)
        metrics["figure2_alpha"] = mapped.alpha
        figures["Figure 2: backbone embeddings of the test set"] = plots_.scatter_panels(
            points, ["origin", "content", "generator"], "Figure 2: relational-autoencoder map (alpha "
            f"{mapped.alpha:g})", plots / "figure2_map.png")
        tables["Figure 2: alpha search"] = pd.DataFrame(mapped.search).round(4)

    loco = pd.concat([pd.read_parquet(p) for p in _read("loco", cfg.contents, imaginet_runs.SCORES)],
                     ignore_index=True) if cfg.contents else pd.DataFrame()
    if len(loco):
        figure3 = T.loco_table(loco)
        figure3.to_csv(out / "figure3_leave_one_content_out.csv", index=False)
        held = figure3[figure3["held_out"]]
        metrics["figure3"] = {r.excluded: {"held_out_acc": r.acc, "held_out_auc": r.auc,
                                           "others_acc": float(figure3[(figure3["excluded"] == r.excluded)
                                                                       & ~figure3["held_out"]]["acc"].mean())}
                              for r in held.itertuples()}
        tables["Figure 3 (this run)"] = figure3.round(3)
        figures["Figure 3: leave one content type out"] = plots_.facet_bars(
            figure3.melt(id_vars=["excluded", "content"], value_vars=["acc", "auc"], var_name="metric"),
            "content", "value", "excluded", "metric", "Figure 3: trained without one content type",
            plots / "figure3_leave_one_content_out.png")

    table6 = timing_table(cfg)
    table6.to_csv(out / "table6_inference_ms.csv", index=False)
    metrics["table6_ms_per_image"] = dict(zip(table6["network"], table6["ms_per_image"], strict=True))
    tables |= {"Table 6 (this machine)": table6.round(1), "Table 6 (paper, RTX 4090)": paper["table6"]}

    external = external_tables(cfg)
    if len(external):
        external.to_csv(out / "tables4_5_external.csv", index=False)
        tables["Tables 4-5: external test sets"] = external.round(3)
    write_json(metrics, Path(paths.metrics_file("imaginet")))
    return Result(tables=tables, figures=figures, metrics=metrics)
