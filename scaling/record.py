"""The run record: `summary.json` and `metrics.parquet` in the run directory.

A group of replicas (`train.replicas`) records each of its models as such a run, in a
directory of its own; the group's directory holds its checkpoints and `replicas.json` (the
replicas' run ids and statuses) instead.

Both are written atomically (temp file, then rename), so a reader (a sweep deciding what to
skip, the results table) never sees half a record, even when the run is killed mid-write.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

SUMMARY = "summary.json"
METRICS = "metrics.parquet"
POSITIONS = "positions.parquet"
REPLICAS = "replicas.json"
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


def _write_json(path: Path, content: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(content, f, indent=2, sort_keys=False, allow_nan=True)
            f.write("\n")

    atomic_write(path, write)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    _write_json(Path(run_dir) / SUMMARY, summary)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary, or None where there is none yet."""
    return _read_json(Path(run_dir) / SUMMARY)


def write_replicas(group_dir: Path, group: dict[str, Any]) -> None:
    """A group's `replicas.json`: status, config and [{run_id, status}] of its replicas."""
    _write_json(Path(group_dir) / REPLICAS, group)


def read_replicas(group_dir: Path) -> dict[str, Any] | None:
    """A group's `replicas.json`, or None where there is none."""
    return _read_json(Path(group_dir) / REPLICAS)


def record_failure(run_dir: Path, error: BaseException, config: dict[str, Any],
                   record: str = SUMMARY) -> None:
    """Mark the run in `run_dir` failed with `error`, keeping what else its record holds.

    `record` is SUMMARY for a run, REPLICAS for a group of replicas. A completed record is left
    as it is: an attempt that failed again (say, its corpus is gone) does not undo a result.
    """
    path = Path(run_dir) / record
    try:
        previous = _read_json(path) or {}
    except ValueError:  # a record torn by hand: the failure is worth more than its remains
        previous = {}
    if previous.get("status") == "completed":
        return
    _write_json(path, {**previous, "status": "failed", "error": f"{type(error).__name__}: {error}",
                       "config": config})


@contextmanager
def failure_recorded(run_dir: Path, config: dict[str, Any],
                     record: str = SUMMARY) -> Iterator[None]:
    """Record any exception raised inside (while a run is set up: its data, its model) as the
    run's failure (`record_failure`), then let it propagate."""
    try:
        yield
    except Exception as error:
        record_failure(run_dir, error, config, record)
        raise


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """One row per evaluation: METRIC_COLUMNS, then any other columns of the rows (the losses
    on extra evaluation sets, `<name>_loss`) in the order they first appear."""
    extra = [c for c in dict.fromkeys(k for row in rows for k in row) if c not in METRIC_COLUMNS]
    table = pd.DataFrame(rows, columns=[*METRIC_COLUMNS, *extra])
    atomic_write(Path(run_dir) / METRICS, lambda tmp: table.to_parquet(tmp, index=False))


def write_positions(run_dir: Path, losses) -> None:
    """Final validation loss at each context position (1-based), for in-context learning."""
    table = pd.DataFrame({"position": range(1, len(losses) + 1), "loss": losses})
    atomic_write(Path(run_dir) / POSITIONS, lambda tmp: table.to_parquet(tmp, index=False))
