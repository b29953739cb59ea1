"""WSD cooldown branches (`train.schedule=wsd train.cooldowns=[D1, D2, ...]`, Hägele et al.
2024): every data size of a study for one long run per model size plus the cooldowns.

A branch of Dk tokens is the `wsd` run of train.tokens = Dk (`scaling.config.branch_configs`):
its schedule holds the peak until the last train.cooldown_fraction of its steps, so up to
there it *is* the constant-LR trunk, and it starts from the trunk's checkpoint of that step
(the whole train state, optimizer moments and step count included) and only cools down. Dk
counts every token the branch's model saw, the trunk's prefix included, as a cosine run's D
does: a WSD grid and a cosine grid of the same (N, D) values are directly comparable.

What is recorded where:
- the trunk's directory (the sweep's run directory, `...-trunk-...`) holds its checkpoints (the
  branch points kept whatever train.keep_checkpoints prunes) and `branches.json`: status,
  config, data fingerprints, the trunk's steps, tokens and FLOPs, and each branch's run id,
  tokens, start step and status. It is not a run: the results table skips it.
- each branch is a run of its own beside it, in the directory its standalone config names
  (`run_id`), locked while it trains, with the usual record plus: `branch_of` (the trunk's
  directory name), `branch_step` (the trunk step it starts from), `cooldown_steps`, `flops`
  (what the branch itself cost: its cooldown steps only), `path_flops` (its whole path, trunk
  prefix and cooldown: the compute its model saw, which fits take as C) and `trunk_flops` (the
  trunk's whole cost, shared by its branches: a study's spent FLOPs count it once per trunk).
  Its metrics.parquet holds the trunk's evaluations up to its start, then its own.

A killed trunk resumes from its latest checkpoint, a killed branch from its own; a completed
branch is skipped, and a trunk whose branches have all completed trains nothing again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scaling.checkpoint import Checkpointer
from scaling.config import TrainConfig
from scaling.distributed import process_index
from scaling.record import (
    completed_group,
    completed_record,
    read_branches,
    read_summary,
    write_branches,
)
from scaling.sweep import exclusive_run, run_id
from scaling.train import Interrupted, Replica, StartFrom, train_models

log = logging.getLogger("scaling")
# What `train_models` is told the trunk's record is: present, so it writes none (the trunk is
# not a run; its record is branches.json).
TRUNK = {"status": "trunk", "record": "branches.json"}


@dataclass(frozen=True)
class Branch:
    """One cooldown branch: its model, optimizer and schedule as its standalone run's (the
    replica's config), the trunk step it starts from, and its last step."""

    replica: Replica
    start: int  # the trunk step whose checkpoint it starts from
    steps: int  # its last step: Dk // tokens per step


def branch_dirs(branches: Sequence[Branch], trunk_dir: Path) -> list[Path]:
    """Where each branch of the trunk in `trunk_dir` is recorded: beside it, in the directory
    its standalone run would have (the `run_id` of its config)."""
    return [Path(trunk_dir).parent / run_id(branch.replica.config) for branch in branches]


def _with_record(branch: Branch, trunk_dir: Path, trunk_steps: int) -> Branch:
    """The branch with its links and costs in its record (`branch_of` ... `trunk_flops`)."""
    stage = branch.replica.stage
    per_step = stage.tokens_per_step * stage.flops_per_token
    record = {**stage.record, "branch_of": Path(trunk_dir).name, "branch_step": branch.start,
              "cooldown_steps": branch.steps - branch.start,
              "flops": (branch.steps - branch.start) * per_step,
              "path_flops": branch.steps * per_step, "trunk_flops": trunk_steps * per_step}
    return replace(branch, replica=replace(branch.replica, stage=replace(stage, record=record)))


def train_branches(trunk: Replica, trunk_steps: int, branches: Sequence[Branch],
                   cfg: TrainConfig, config_dict: dict, trunk_dir: Path) -> list[dict[str, Any]]:
    """Train the trunk to `trunk_steps` (unless its checkpoint of that step is there), then
    each branch not yet completed from its own checkpoint or the trunk's of its start, and
    record each as its own run (`branch_dirs`); `trunk_dir` gets `branches.json`.

    A trunk recorded as completed (with the data of now) trains nothing. When another process
    holds a branch's directory, the trunk is skipped. Returns the branches' summaries ([] when
    skipped). Raises ResumeError for a trunk directory of another config, Interrupted when a
    signal stopped a trunk or branch (recorded as interrupted; the same command resumes it).
    """
    trunk_dir = Path(trunk_dir)
    branches = [_with_record(b, trunk_dir, trunk_steps) for b in branches]
    dirs = branch_dirs(branches, trunk_dir)
    fingerprints = trunk.stage.data_fingerprints
    if completed_group(read_branches(trunk_dir), config_dict, fingerprints, trunk_dir):
        log.info("%s: every cooldown branch is completed; nothing to do", trunk_dir)
        return [read_summary(d) for d in dirs]
    record = _recorder(trunk_dir, trunk, trunk_steps, branches, dirs, config_dict, fingerprints)
    with ExitStack() as locks:
        busy = [d.name for d in dirs  # each process of a multi-process run has its own locks
                if not locks.enter_context(exclusive_run(d, process_index()))]
        if busy:
            log.warning("%s: branches %s are being trained by another process; skipped",
                        trunk_dir, ", ".join(busy))
            return []
        summaries = [completed_record(d, b.replica.config, fingerprints)
                     for b, d in zip(branches, dirs, strict=True)]
        try:
            if not all(summaries):
                record("running")
                _train_trunk(trunk, trunk_steps, [b.start for b in branches], cfg, config_dict,
                             trunk_dir)
            for i, (branch, branch_dir) in enumerate(zip(branches, dirs, strict=True)):
                if summaries[i] is None:
                    log.info("branch %s: steps %d -> %d from %s", branch_dir.name, branch.start,
                             branch.steps, trunk_dir.name)
                    start = StartFrom(trunk_dir / "checkpoints", branch.start, config_dict)
                    summaries[i] = train_models([branch.replica], cfg, branch.replica.config,
                                                branch_dir, [branch_dir], [None], branch.steps,
                                                start_from=start)[0]
        except Interrupted as stop:
            record("interrupted", interrupted_step=stop.step, interrupted_run=stop.run_dir.name)
            raise
        except Exception as error:
            record("failed", error=f"{type(error).__name__}: {error}")
            raise
        record("completed")
        return summaries


def _train_trunk(trunk: Replica, trunk_steps: int, starts: Sequence[int], cfg: TrainConfig,
                 config_dict: dict, trunk_dir: Path) -> None:
    """Train (or resume) the trunk to `trunk_steps`, checkpointing and keeping every branch
    point of `starts`; nothing where its last checkpoint is that step already."""
    with closing(Checkpointer(trunk_dir / "checkpoints", keep=1, create=False)) as checkpoints:
        if trunk_steps in checkpoints.steps():
            return
    log.info("%s: trunk of %d steps at constant LR", trunk_dir.name, trunk_steps)
    train_models([trunk], cfg, config_dict, trunk_dir, [trunk_dir], [TRUNK], trunk_steps,
                 keep_steps=sorted(set(starts)))


def _recorder(trunk_dir: Path, trunk: Replica, trunk_steps: int, branches: Sequence[Branch],
              dirs: Sequence[Path], config_dict: dict, fingerprints: dict[str, str]):
    """A function writing the trunk's branches.json with a status (and extra fields), each
    branch's status read from its own record."""
    stage = trunk.stage

    def record(status: str, **extra: Any) -> None:
        write_branches(trunk_dir, {
            "status": status, **extra,
            "trunk_steps": trunk_steps,
            "trunk_tokens": trunk_steps * stage.tokens_per_step,
            "trunk_flops": trunk_steps * stage.tokens_per_step * stage.flops_per_token,
            "branches": [{"run_id": d.name, "tokens": b.steps * stage.tokens_per_step,
                          "start_step": b.start, "steps": b.steps,
                          "status": (read_summary(d) or {"status": "pending"})["status"]}
                         for b, d in zip(branches, dirs, strict=True)],
            **fingerprints,
            "config": config_dict,
        })

    return record
