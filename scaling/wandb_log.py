"""Weights & Biases runs beside each run's record (`train.loggers=[wandb]`, optional).

wandb is not a dependency: `pip install wandb` to use it (config validation says so in one
line when it is missing). A run logs offline, into `<run dir>/wandb/`, unless WANDB_MODE says
otherwise (`online` streams, after `wandb login`; `wandb sync <run dir>/wandb/offline-run-*`
uploads an offline run later). The W&B run's id is the record directory's name, its group the
sweep directory's, its project $WANDB_PROJECT or "scaling"; it logs the same evaluation rows
as the TensorBoard hook (scaling.tensorboard) and the final losses in its summary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scaling.hooks import Hook, LoopState
from scaling.tensorboard import AXES, HPARAM_KEYS, _number, tag

PROJECT = "scaling"  # unless $WANDB_PROJECT names another


class WandbLog(Hook):
    """After each evaluation, its new rows logged at their step; at the end, final losses.

    One W&B run per model recorded here (`record_dirs[i]` for i in `models`), resumed by id
    when the record is; `loop` is the state after resuming: the rows it holds were logged."""

    def __init__(self, record_dirs: Sequence[Path], models: Sequence[int], loop: LoopState,
                 hparams: dict[str, Any]) -> None:
        import wandb

        config = {k: v for k, v in hparams.items() if k in HPARAM_KEYS}
        self.runs = {}
        for i in models:
            record = Path(record_dirs[i])
            self.runs[i] = wandb.init(
                project=os.environ.get("WANDB_PROJECT", PROJECT), dir=str(record),
                id=re.sub(r"[^\w-]", "-", record.name), name=record.name,
                group=record.parent.name, config=config, resume="allow",
                mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
                settings=wandb.Settings(console="off", silent=True))
        self.written = {i: len(loop.rows[i]) for i in models}

    def __call__(self, loop: LoopState) -> None:
        for i, run in self.runs.items():
            for row in loop.rows[i][self.written[i]:]:
                run.log({tag(c): v for c, v in row.items() if c not in AXES and _number(v)}
                        | {"tokens": row["tokens"]}, step=row["step"])
            self.written[i] = len(loop.rows[i])

    def finish(self, loop: LoopState) -> None:
        self(loop)
        for i, run in self.runs.items():
            rows = loop.rows[i]
            for k in ("train_loss", "val_loss"):
                if rows and _number(rows[-1].get(k)):
                    run.summary[f"final_{k}"] = rows[-1][k]

    def close(self) -> None:
        for run in self.runs.values():
            run.finish()
