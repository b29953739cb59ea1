"""The run record: `summary.json` and `metrics.parquet` in the run directory, and the one place
that decides what a directory holds: a finished run of this config and data, completed or
diverged (`completed_record`), another run (`ResumeError`), or a failure (`record_failure`).

A group of replicas (`train.replicas`) records each of its models as such a run, in a
directory of its own; the group's directory holds its checkpoints and `replicas.json` (the
replicas' run ids and statuses) instead. A WSD trunk (`train.cooldowns`) likewise: its cooldown
branches are runs beside it, its directory holds checkpoints and `branches.json`.

Both are written atomically (temp file, then rename), so a reader (a sweep deciding what to
skip, the results table) never sees half a record, even when the run is killed mid-write. In a
run of several processes (`scaling.distributed`) only process 0 writes: every write here does
nothing in the others.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from scaling.console import UsageError
from scaling.sweep import identity

log = logging.getLogger("scaling")

SUMMARY = "summary.json"
METRICS = "metrics.parquet"
POSITIONS = "positions.parquet"
REPLICAS = "replicas.json"
BRANCHES = "branches.json"  # a WSD trunk's record (`scaling.branches`)
METRIC_COLUMNS = ("step", "tokens", "flops", "train_loss", "val_loss", "lr", "grad_norm",
                  "tokens_per_s")
# Set to 1 to train again from the start a run whose data changed since it was recorded or
# checkpointed (its checkpoints are deleted and its record replaced). Scoped to a data change,
# so that leaving it set never throws away a checkpoint that is still good.
RESTART_ENV = "SCALING_RESTART_ON_DATA_CHANGE"
# The statuses of a run that is over: training it again would end the same way (a diverged run
# diverges again at the same step, its batches and steps being pure functions of its config),
# so a relaunch keeps its record instead.
FINISHED = ("completed", "diverged")
# The packages whose versions a run record states (with Python's).
RECORDED_VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


class ResumeError(UsageError):
    """The run directory holds a checkpoint or record of a different run."""


class DataChangedError(ResumeError):
    """The run directory holds a checkpoint or record of this run trained on other data."""


def check_same_run(saved: dict, current: dict, run_dir: Path) -> None:
    """Raise ResumeError naming every changed key if the config `saved` in a record or
    checkpoint of `run_dir` is another run than `current` (`scaling.sweep.identity`)."""
    saved_id, current_id = identity(saved), identity(current)
    changed = [
        f"{k}: {saved_id.get(k)!r} -> {current_id.get(k)!r}"
        for k in sorted(set(saved_id) | set(current_id))
        if saved_id.get(k) != current_id.get(k)
    ]
    if changed:
        raise ResumeError(
            f"{run_dir} holds a checkpoint of a run with a different config "
            f"({'; '.join(changed)}); use a fresh run directory or restore the config."
        )


def data_changed(saved: dict, current: dict[str, str], where: Path) -> bool:
    """Whether the data fingerprints in `saved` (a record, or a checkpoint's bookkeeping) differ
    from `current`, the data's now: raise DataChangedError naming both unless RESTART_ENV asks
    to start over. A fingerprint `saved` lacks (recorded before it was) is taken as unchanged."""
    changed = [f"{key} {saved[key]} -> {value}" for key, value in current.items()
               if saved.get(key, value) != value]
    if not changed:
        return False
    message = (f"{where} was trained on other data than its config names now "
               f"({'; '.join(changed)}): the corpus changed on disk")
    if os.environ.get(RESTART_ENV) != "1":
        raise DataChangedError(
            f"{message}. Restore the old corpus, or use another run directory, or set "
            f"{RESTART_ENV}=1 to train this run again from the start on the new data.")
    log.warning("%s; training it again from the start (%s=1)", message, RESTART_ENV)
    return True


def completed_group(group: dict | None, config: dict[str, Any], fingerprints: dict[str, str],
                    group_dir: Path) -> bool:
    """Whether a group's record (`replicas.json`, a WSD trunk's `branches.json`; None: none yet)
    holds this very group (`config`, the data of `fingerprints`) as completed: nothing to
    train. Checked whatever its status, since the caller rewrites it as running: raises
    ResumeError for another run's record, DataChangedError for other data (`data_changed`)."""
    if group is None:
        return False
    check_same_run(group["config"], config, group_dir)
    changed = data_changed(group, fingerprints, group_dir)
    return group["status"] == "completed" and not changed


def completed_record(run_dir: Path, config: dict[str, Any],
                     fingerprints: dict[str, str]) -> dict[str, Any] | None:
    """The summary of `run_dir` if it records this very run (`config`, trained on the data of
    `fingerprints`) as finished (FINISHED: completed or diverged); None where it holds no
    finished run (none yet, running, interrupted, failed: to be trained). Raises ResumeError for
    another run's record, DataChangedError for this run's on other data (unless RESTART_ENV)."""
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") not in FINISHED:
        return None
    check_same_run(summary["config"], config, run_dir)
    return None if data_changed(summary, fingerprints, run_dir) else summary


def record_name(train: Any) -> str:
    """The file that records a run of this `train` config: SUMMARY for one model, REPLICAS for
    a group of replicas (`train.replicas`), BRANCHES for a WSD trunk (`train.cooldowns`)."""
    from scaling.config import is_replica_group

    if train.get("cooldowns") if isinstance(train, Mapping) else train.cooldowns:
        return BRANCHES
    return REPLICAS if is_replica_group(train) else SUMMARY


def completed_same_config(run_dir: Path, config: dict[str, Any],
                          record: str = SUMMARY) -> dict[str, Any] | None:
    """The record of `run_dir` (`record`: its summary.json, a group's replicas.json or a trunk's
    branches.json, as `record_name` says) where it says that this very config
    (`scaling.sweep.identity`) finished (FINISHED: completed, or diverged); else None, an
    unreadable or another run's record included. Never raises: what a launcher asks before it
    starts a run, whose own process then checks the data (`completed_record`)."""
    try:
        record = _read_json(Path(run_dir) / record)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in FINISHED:
        return None
    return record if identity(record.get("config") or {}) == identity(config) else None


def versions() -> dict[str, str]:
    """Python's version and those of RECORDED_VERSIONS, as a run record states them."""
    return {"python": platform.python_version(),
            **{name: importlib.metadata.version(name) for name in RECORDED_VERSIONS}}


def writes_records() -> bool:
    """Whether this process writes records: all but processes 1, 2, ... of a multi-process run."""
    if "jax" not in sys.modules:  # no JAX loaded, no other processes: and none loaded for this
        return True
    from scaling.distributed import is_primary

    return is_primary()


def atomic_write(path: Path, write) -> None:
    """Write `path` through `write(temporary path)`, then rename it into place; nothing in a
    process that does not write records (`writes_records`). A reader never sees half a file,
    and a failed write leaves `path` as it was and no temporary file; its OSError names `path`
    where the system's names none or the temporary one (ENOSPC from a write or close)."""
    if not writes_records():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.filename not in (None, tmp):
            raise
        # A write or close that fails (a full disk) names no file, or the temporary one: name
        # the file it was for.
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_directory(directory: Path, last: Collection[str] = ()) -> Iterator[Path]:
    """A new private directory beside `directory` to write its files into: once the block ends
    without an error, each file written there is renamed into `directory` (each rename atomic),
    those named in `last` after the others; the private directory is removed however the block
    ends. A reader or another writer of `directory` (a second `scaling-report` on the sweep)
    never sees half a file, and a block that fails (a full disk) leaves `directory` as it was.
    Files of `directory` that the block did not write are kept."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir(parents=True)
    try:
        yield staging
        written = sorted((p for p in staging.rglob("*") if p.is_file()),
                         key=lambda p: p.name in last)
        for path in written:
            target = directory / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def tokenizer_cache(summary: dict[str, Any]) -> str | None:
    """The data cache whose tokenizer a run used (its own, or the one it inherited from its
    parent): what its children's token caches are keyed by. None for a record without one."""
    source = summary.get("tokenizer_source")
    return source["cache"] if source else summary.get("corpus_cache")


def read_replicas(group_dir: Path) -> dict[str, Any] | None:
    """A group's `replicas.json`, or None where there is none."""
    return _read_json(Path(group_dir) / REPLICAS)


def write_branches(trunk_dir: Path, trunk: dict[str, Any]) -> None:
    """A WSD trunk's `branches.json`: status, config, the trunk's steps and FLOPs, and
    [{run_id, tokens, start_step, status}] of its cooldown branches."""
    _write_json(Path(trunk_dir) / BRANCHES, trunk)


def read_branches(trunk_dir: Path) -> dict[str, Any] | None:
    """A WSD trunk's `branches.json`, or None where there is none."""
    return _read_json(Path(trunk_dir) / BRANCHES)


def record_failure(run_dir: Path, error: BaseException, config: dict[str, Any],
                   record: str = SUMMARY) -> None:
    """Mark the run in `run_dir` failed with `error`, keeping what else its record holds.

    `record` is SUMMARY for a run, REPLICAS for a group of replicas. A finished record
    (FINISHED) is left as it is: an attempt that failed again (say, its corpus is gone) does not
    undo a result.
    """
    path = Path(run_dir) / record
    try:
        previous = _read_json(path) or {}
    except ValueError:  # a record torn by hand: the failure is worth more than its remains
        previous = {}
    if previous.get("status") in FINISHED:
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


def write_artifacts(run_dir: Path, artifacts: dict[str, Any]) -> None:
    """What the loop's final measurements left for a model (`LoopState.artifacts`): for now
    `positions`, the loss at each context position (positions.parquet)."""
    if "positions" in artifacts:
        write_positions(run_dir, artifacts["positions"])


def write_positions(run_dir: Path, losses) -> None:
    """Final validation loss at each context position (1-based), for in-context learning."""
    table = pd.DataFrame({"position": range(1, len(losses) + 1), "loss": losses})
    atomic_write(Path(run_dir) / POSITIONS, lambda tmp: table.to_parquet(tmp, index=False))
