"""Stage ``degrade``: GenImage Task 2's degraded copies of every test image, and the test images of
the sharpness counterfactual (:mod:`synthdet.analysis.sharpness`: per subset the reals blurred to
the fakes' high-frequency share, the fakes sharpened to the reals', strengths chosen on the
training split), which every table run scores beside the clean ones; and, on the embedded benchmark
(``degrade.sharpness_variant``), the sharpness-matched variant: every split's reals blurred, each
to the share of a fake drawn from its subset's training fakes
(:func:`synthdet.analysis.sharpness.write_matched_variant`), which the audit probes and trains on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthdet.analysis import sharpness
from synthdet.analysis.report import sample_grid
from synthdet.data.manifest import read_manifest
from synthdet.stages import paths
from synthdet.stages.base import Out, Result, Stage, select
from synthdet.transforms.degrade import Condition, scaled_conditions, write_degraded

STAGE = Stage(
    name="degrade", notebook="notebooks/04_degrade.ipynb", module=__name__,
    params=("seed", "data.name", "train.input_size", "degrade"), deps=(paths.SPLITS,), outs=(Out(paths.DEGRADE),),
)


@dataclass(frozen=True)
class Config:
    seed: int  # which training views choose the sharpness counterfactual's strengths; the variant's draws
    input_size: int
    conditions: tuple[Condition, ...]
    sharpness_variant: bool  # build the sharpness-matched variant (the embedded benchmark only)

    @classmethod
    def from_params(cls, params: dict) -> Config:
        p = select(params, STAGE.params)
        d, size = p["degrade"], int(p["train"]["input_size"])
        return cls(int(p["seed"]), size, tuple(scaled_conditions(size, d["reference_size"], d["lowres"],
                                                                 d["jpeg_quality"], d["blur_sigma"])),
                   bool(d["sharpness_variant"]) and p["data"]["name"] == "embedded")


def run(params: dict) -> Result:
    cfg = Config.from_params(params)
    df = read_manifest(Path(paths.SPLITS))
    table = write_degraded(df[df["split"] == "test"], Path(paths.DEGRADE), cfg.input_size, list(cfg.conditions))
    table.to_parquet(Path(paths.DEGRADED), index=False)
    matching = sharpness.match_sharpness(df[df["split"] == "train"], cfg.input_size, cfg.seed)
    matching.to_csv(Path(paths.SHARPNESS_STRENGTHS), index=False)
    matched = sharpness.write_matched(df[df["split"] == "test"], matching, Path(paths.DEGRADE), cfg.input_size)
    matched.to_parquet(Path(paths.SHARPNESS_MATCHED), index=False)
    if cfg.sharpness_variant:
        variant = sharpness.write_matched_variant(df, matching, Path(paths.MATCHED_VARIANT), cfg.input_size, cfg.seed)
    else:  # an empty manifest: what reads it sees that there is no variant
        variant = df.iloc[:0]
    variant.to_parquet(Path(paths.MATCHED_VARIANT_MANIFEST), index=False)
    counts = table.groupby(["condition", "kind", "paper_value", "effective_value"], sort=False).size()
    example = table[table["source_path"] == table["source_path"].iloc[0]]
    return Result(tables={"conditions": counts.rename("images").to_frame(),
                          "sharpness counterfactual: strengths, chosen on training views": matching.round(4),
                          "sharpness counterfactual: test images it changes":
                              matched.groupby(["subset", "condition"]).size().rename("images").reset_index(),
                          "sharpness-matched variant: images per split and label":
                              variant.groupby(["split", "label"]).size().rename("images").reset_index(),
                          "one test image under every condition": example[["condition", "effective_value"]].T},
                  figures={"that image, left to right": sample_grid(example["path"].tolist(), cols=len(example),
                                                                    size=cfg.input_size)})
