"""The run record: `summary.json` and `metrics.parquet` in the run directory.

Both are written atomically (temp file, then rename), so a reader (a sweep deciding what to
skip, the results table) never sees half a record, even when the run is killed mid-write.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

SUMMARY = "summary.json"
METRICS = "metrics.parquet"
POSITIONS = "positions.parquet"
METRIC_COLUMNS = ("step", "tokens", "flops", "train_loss", "val_loss", "lr", "grad_norm",
                  "tokens_per_s")


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2, sort_keys=False, allow_nan=True)
            f.write("\n")

    atomic_write(Path(run_dir) / SUMMARY, write)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None where there is none yet."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """One row per evaluation, in the column order of METRIC_COLUMNS."""
    table = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    atomic_write(Path(run_dir) / METRICS, lambda tmp: table.to_parquet(tmp, index=False))


def write_positions(run_dir: Path, losses) -> None:
    """Final validation loss at each context position (1-based), for in-context learning."""
    table = pd.DataFrame({"position": range(1, len(losses) + 1), "loss": losses})
    atomic_write(Path(run_dir) / POSITIONS, lambda tmp: table.to_parquet(tmp, index=False))
