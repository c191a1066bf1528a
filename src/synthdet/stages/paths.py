"""Where the stages keep what they write and read: each path written once."""

DATA = "data"
DOWNLOAD = "artifacts/download"
MANIFEST = f"{DOWNLOAD}/manifest.parquet"
SPLIT = "artifacts/split"
SPLITS = f"{SPLIT}/splits.parquet"
TRAIN = "artifacts/train"
DETECTOR = f"{TRAIN}/detector.pt"
TRAIN_CHECKPOINTS = f"{TRAIN}/checkpoints"
DEGRADE = "artifacts/degrade"
DEGRADED = f"{DEGRADE}/degraded.parquet"
EVALUATE = "artifacts/evaluate"
RUNS = "artifacts/runs"
RUN_CHECKPOINTS = "artifacts/checkpoints"
TABLES = "artifacts/tables"
PAPER = "paper"
METRICS = "metrics"
PLOTS = "plots"


def metrics_file(stage: str) -> str:
    return f"{METRICS}/{stage}.json"
