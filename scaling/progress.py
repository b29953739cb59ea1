"""Training progress: a rich progress bar on a terminal, plain log lines everywhere else."""

from __future__ import annotations

import logging
import sys

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("scaling")


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


class TrainProgress:
    """Shows step, loss and tokens/s; the caller decides how often (each update is a host sync)."""

    def __init__(self, total_steps: int, start_step: int, tty: bool | None = None) -> None:
        self.total_steps = total_steps
        self._bar = None
        if sys.stdout.isatty() if tty is None else tty:
            self._bar = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(), TimeRemainingColumn(),
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step,
                                            loss="-", tps="-")
            self._bar.start()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}",
                             tps=_si(tokens_per_s))
        else:
            log.info("step %d/%d  loss %.4f  %s tok/s", step, self.total_steps, loss,
                     _si(tokens_per_s))

    def eval(self, step: int, val_loss: float) -> None:
        message = f"step {step}/{self.total_steps}  val_loss {val_loss:.4f}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step)
            self._bar.console.log(message)
        else:
            log.info(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
