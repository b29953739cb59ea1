"""Replica groups: K same-shape models trained in one vmapped step (`train.replicas`), each
recorded as the standalone run it would have been.

The loop trains them as it trains one model (`scaling.train.train_models`); this module adds
what only a group has: its own directory (checkpoints and `replicas.json`), each replica's
record in the directory its own run would have, and the locks and skip rules across both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from scaling.config import TrainConfig
from scaling.record import (
    completed_group,
    completed_record,
    read_replicas,
    read_summary,
    write_replicas,
)
from scaling.sweep import exclusive_run, run_id
from scaling.train import Interrupted, Replica, train_models

log = logging.getLogger("scaling")


def replica_dirs(replicas: Sequence[Replica], group_dir: Path) -> list[Path]:
    """Where each replica of the group in `group_dir` is recorded: beside it, in the directory
    its own run would have (the `run_id` of its config)."""
    return [Path(group_dir).parent / run_id(replica.config) for replica in replicas]


def train_replicas(
    replicas: Sequence[Replica], cfg: TrainConfig, config_dict: dict, group_dir: Path,
    total_steps: int,
) -> list[dict[str, Any]]:
    """Train the replicas at once and record each as the run it would have been alone.

    `group_dir` holds the group's checkpoints (a killed group resumes like one run) and
    `replicas.json`: the group's status, config and data fingerprints and each replica's run id
    and status; each replica's record goes to its own directory (`replica_dirs`), locked while
    the group trains. A completed group trains nothing again, nor does one whose replicas all
    hold completed records already (of the same data); a replica recorded as completed before
    keeps its record. When another process holds a replica's directory, the group is skipped.
    Returns the replicas' summaries ([] when skipped).
    """
    group_dir = Path(group_dir)
    dirs = replica_dirs(replicas, group_dir)
    fingerprints = replicas[0].stage.data_fingerprints  # the replicas share their data
    if completed_group(read_replicas(group_dir), config_dict, fingerprints, group_dir):
        log.info("%s already holds a completed group of replicas; nothing to do", group_dir)
        return [read_summary(d) for d in dirs]
    with ExitStack() as locks:
        busy = [d.name for d in dirs if not locks.enter_context(exclusive_run(d))]
        if busy:
            log.warning("%s: replicas %s are being trained by another process; skipped",
                        group_dir, ", ".join(busy))
            return []
        recorded = [completed_record(d, replica.config, fingerprints)
                    for replica, d in zip(replicas, dirs, strict=True)]
        summaries = list(recorded)
        if not all(recorded):
            _record_group(group_dir, "running", config_dict, dirs,
                          [s["status"] if s else "running" for s in recorded], fingerprints)
            try:
                summaries = train_models(replicas, cfg, config_dict, group_dir, dirs, recorded,
                                         total_steps, group_name=group_dir.name)
            except Interrupted as stop:
                _record_group(group_dir, "interrupted", config_dict, dirs,
                              [(read_summary(d) or {"status": "running"})["status"] for d in dirs],
                              fingerprints, interrupted_step=stop.step)
                raise
            except Exception as error:
                _record_group(group_dir, "failed", config_dict, dirs,
                              [(read_summary(d) or {"status": "failed"})["status"] for d in dirs],
                              fingerprints, error=f"{type(error).__name__}: {error}")
                raise
        _record_group(group_dir, "completed", config_dict, dirs, [s["status"] for s in summaries],
                      fingerprints)
        return summaries


def _record_group(group_dir: Path, status: str, config_dict: dict, dirs: Sequence[Path],
                  statuses: Sequence[str], fingerprints: dict[str, str], **extra: Any) -> None:
    write_replicas(group_dir, {
        "status": status, **extra,
        "replicas": [{"run_id": d.name, "status": s} for d, s in zip(dirs, statuses, strict=True)],
        **fingerprints,
        "config": config_dict,
    })
