"""Where the stages keep what they write and read: each path written once."""

DATA = "data"
SOURCE = "artifacts/source"
FINGERPRINT = f"{SOURCE}/fingerprint.json"
INDEX_CACHE = "artifacts/index_cache"
DOWNLOAD = "artifacts/download"
MANIFEST = f"{DOWNLOAD}/manifest.parquet"
SPLIT = "artifacts/split"
SPLITS = f"{SPLIT}/splits.parquet"
TRAIN = "artifacts/train"
DETECTOR = f"{TRAIN}/detector.pt"
TRAIN_CHECKPOINTS = f"{TRAIN}/checkpoints"
DEGRADE = "artifacts/degrade"
DEGRADED = f"{DEGRADE}/degraded.parquet"
SHARPNESS_MATCHED = f"{DEGRADE}/sharpness_matched.parquet"  # the test images the sharpness counterfactual changes
SHARPNESS_STRENGTHS = f"{DEGRADE}/sharpness.csv"  # its strengths per subset, chosen on training views
# the sharpness-matched variant (embedded only): every split with the counterfactual's change, its manifest
# (empty when not built) and its GenImage-layout tree
MATCHED_VARIANT = f"{DEGRADE}/sharpness_matched_variant"
MATCHED_VARIANT_MANIFEST = f"{DEGRADE}/sharpness_matched_variant.parquet"
EVALUATE = "artifacts/evaluate"
AUDIT = "artifacts/audit"
RUNS = "artifacts/runs"
RUN_CHECKPOINTS = "artifacts/checkpoints"
GENERATOR_GROUPS = f"{RUN_CHECKPOINTS}/download"  # finished generator groups, kept for a rerun
AUDIT_CHECKPOINTS = f"{RUN_CHECKPOINTS}/audit"  # the audit's variant runs, a folder per run
SOURCE_TREE = "src/synthdet"  # what the code stage hashes (one DVC dependency)
CODE = "artifacts/code"  # a file per stage module and per detector name: the hashes of the code it runs
FEATURES = "artifacts/features"  # the probes' frozen-backbone features, a folder per backbone
TABLES = "artifacts/tables"
PAPER = "paper"
METRICS = "metrics"
PLOTS = "plots"


def metrics_file(stage: str) -> str:
    return f"{METRICS}/{stage}.json"


def detector_code(name: str) -> str:
    """What a stage that builds detector ``name`` depends on instead of every detector's source
    (stages/code.py; also with DVC's ``${...}`` as the name)."""
    return f"{CODE}/detector/{name}"


def stage_code(module: str) -> str:
    """What a stage of ``module`` (``synthdet.stages.runs``) depends on instead of each file it
    imports (stages/code.py)."""
    return f"{CODE}/stage/{module.rsplit('.', 1)[-1]}"


FULL = "full"  # the budget of a table run on the whole training subset


def run_name(family: str, model: str, subset: str, seed: int | str, budget: str = FULL) -> str:
    """A table run's folder under :data:`RUNS`, ``<family>/<model>__<subset>[__<budget>]__s<seed>``
    (also with DVC's ``${...}`` as values): the only place that name is spelled."""
    middle = "" if budget == FULL else f"__{budget}"
    return f"{family}/{model}__{subset}{middle}__s{seed}"


MATCHED_CONDITION = "sharpness_matched"  # a matched run's scores of the variant's test images (tables read it)
EACH = "each"  # the training-subset part of a probe run's name: it holds one head per training subset


def probe_model(backbone: str) -> str:
    """A frozen-feature probe's name in the tables (its ``model`` column)."""
    return f"{backbone}_probe"
