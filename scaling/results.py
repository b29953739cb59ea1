"""Run records → one tidy table per sweep: `results.parquet` (a row per run),
`curves.parquet` (a row per evaluation of every run, keyed by `run_id`) and
`positions.parquet` (each run's final validation loss at every context position).

Every row carries the model's parameters and FLOPs per token by part (`scaling.flops.
count_fields`: non-embedding, token and position embedding, unembedding, total; FLOPs per
token with and without the unembedding and the attention term). A record written before a
field existed gets it derived from its model config and vocabulary; one that cannot be
derived stays missing (NaN in the table), and the run still has its row.

Every run directory below the sweep directory counts, whatever its status: failed and
diverged runs keep their row with the reason. A directory that is not a readable record is
reported by path and skipped; it never stops the table from being written. The directory of a
group of replicas (`train.replicas`, holding `replicas.json`) is not a run: its models are
runs of their own, beside it, and it is skipped silently; so is a WSD trunk's
(`train.cooldowns`, holding `branches.json`), whose cooldown branches are the runs.

`C` is the compute a run's model saw: a cooldown branch's `path_flops` (trunk prefix and
cooldown, `scaling.branches`), every other run's `flops`. What a branch itself cost stays in
`flops`, and its trunk's in `trunk_flops`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.flops import record_counts
from scaling.record import BRANCHES, METRICS, POSITIONS, REPLICAS, SUMMARY, atomic_write
from scaling.sweep import flatten

RESULTS = "results.parquet"
CURVES = "curves.parquet"

# Short names the analysis tools expect by default (scaling-fit's --N/--D/--C/--loss).
ALIASES = {"N": "n_params_nonembed", "D": "tokens", "C": "flops", "loss": "final_val_loss",
           "budget": "train.budget", "parent": "parent_run", "corpus": "data.source"}


@dataclass
class Collected:
    results: pd.DataFrame
    curves: pd.DataFrame
    positions: pd.DataFrame  # run_id, position, loss
    problems: list[str] = field(default_factory=list)  # "path: what is wrong"


def _run_dirs(sweep_dir: Path) -> list[Path]:
    """Directories holding a summary, or looking like an unfinished run (Hydra's .hydra/).

    os.walk passes over a directory that vanishes while the sweep is walked (a checkpoint
    Orbax renames into place, another report's staging directory), where Path.rglob raises
    FileNotFoundError and the report would stop."""
    return sorted(Path(parent) for parent, dirs, files in os.walk(sweep_dir)
                  if SUMMARY in files or ".hydra" in dirs)


def _row(run_dir: Path, sweep_dir: Path) -> dict:
    with open(run_dir / SUMMARY) as f:
        summary = json.load(f)
    if not isinstance(summary, dict) or "status" not in summary:
        raise ValueError("summary.json has no 'status'")
    if not isinstance(summary.get("config"), dict):
        raise ValueError("summary.json has no 'config'")
    summary = _derived_counts(summary) | summary
    config = flatten(summary.pop("config"))
    # nested fields (`versions`) as columns of their own: `versions.jax`
    row = {"run_id": run_dir.relative_to(sweep_dir).as_posix(), **flatten(summary)}
    for key, value in config.items():
        row[key] = ",".join(map(str, value)) if isinstance(value, list) else value
    return row


def _derived_counts(summary: dict) -> dict:
    """The count fields of a run's model, from its config and vocabulary, for a record
    written before they existed; empty when the record lacks what they need."""
    try:
        return record_counts(summary["config"]["model"], summary["vocab_size"],
                             summary.get("flops_per_token"))
    except (KeyError, TypeError, ValueError):
        return {}


def collect(sweep_dir: Path) -> Collected:
    """Read every run record below `sweep_dir` into the two tables."""
    sweep_dir = Path(sweep_dir)
    rows, curves, positions, problems = [], [], [], []
    for run_dir in _run_dirs(sweep_dir):
        if not (run_dir / SUMMARY).exists():
            if (run_dir / REPLICAS).exists() or (run_dir / BRANCHES).exists():
                continue  # a group of replicas or a WSD trunk: its models are runs of their own
            problems.append(f"{run_dir}: no summary.json (never started, or not a run)")
            continue
        try:
            row = _row(run_dir, sweep_dir)
        except (OSError, ValueError) as error:
            problems.append(f"{run_dir}: unreadable summary.json ({error})")
            continue
        rows.append(row)
        if (run_dir / POSITIONS).exists():
            try:
                positions.append(pd.read_parquet(run_dir / POSITIONS).assign(run_id=row["run_id"]))
            except (OSError, ValueError) as error:
                problems.append(f"{run_dir}: unreadable {POSITIONS} ({error})")
        if (run_dir / METRICS).exists():
            try:
                curve = pd.read_parquet(run_dir / METRICS)
            except (OSError, ValueError) as error:
                problems.append(f"{run_dir}: unreadable metrics.parquet ({error})")
                continue
            curves.append(curve.assign(run_id=row["run_id"]))
        elif row["status"] == "completed":
            problems.append(f"{run_dir}: completed but no metrics.parquet")

    results = pd.DataFrame(rows)
    for alias, column in ALIASES.items():
        # Always present, NaN where no run recorded it (a sweep of interrupted runs has no
        # final loss yet), so that the analysis finds its columns and says what is missing.
        results[alias] = results.get(column, np.nan)
    if "path_flops" in results:  # a cooldown branch's model saw its trunk's prefix too
        results["C"] = results["path_flops"].fillna(results["C"])
    curve_table = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
        columns=["run_id", "step", "tokens", "flops", "train_loss", "val_loss"])
    if not curve_table.empty:
        curve_table = curve_table[["run_id", *[c for c in curve_table if c != "run_id"]]]
    position_table = pd.concat(positions, ignore_index=True) if positions else pd.DataFrame(
        columns=["run_id", "position", "loss"])
    return Collected(results=results, curves=curve_table,
                     positions=position_table[["run_id", "position", "loss"]], problems=problems)


def write_tables(sweep_dir: Path) -> Collected:
    """Collect and write the three tables into the sweep directory."""
    collected = collect(sweep_dir)
    for name, table in ((RESULTS, collected.results), (CURVES, collected.curves),
                        (POSITIONS, collected.positions)):
        atomic_write(Path(sweep_dir) / name, lambda tmp, t=table: t.to_parquet(tmp, index=False))
    return collected
