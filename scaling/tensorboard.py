"""TensorBoard event files beside each run's record (`train.loggers=[tensorboard]`, the default).

A hook (`TensorBoardLog`) writes every evaluation row the loop records (train and validation
loss, learning rate, gradient norm, tokens/s, MFU and each stage's own columns) as scalars
under `<run dir>/tb/`, and at the end the run's hyperparameters with its final losses (the
HParams tab). A sweep directory is a valid `tensorboard --logdir`: every run's events sit in
its own directory below it. tensorboardX writes the files: a small, well-kept writer with no
TensorFlow or torch. A resumed run purges the steps after its checkpoint, so a step that was
trained twice shows once.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scaling.flops import mfu
from scaling.hooks import Hook, LoopState

EVENTS_DIR = "tb"  # below a run's record directory
# Evaluation-row columns that are the x axis, not a scalar; the rest are scalars.
AXES = ("step", "tokens", "flops")
# Scalars shown together: a column's tag (a column not named here is its own tag).
TAGS = {"train_loss": "loss/train", "val_loss": "loss/val"}
HPARAM_KEYS = ("model.n_layer", "model.d_model", "model.n_head", "model.n_ctx", "train.tokens",
               "train.batch_size", "train.lr", "train.schedule", "train.seed", "data.source",
               "data.tokenizer", "data.vocab_size", "stage.kind")


def tag(column: str) -> str:
    """The TensorBoard tag of an evaluation-row column."""
    return TAGS.get(column, column)


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without torch.

    tensorboardX imports torch whenever it is installed (as with the dev extra, for the
    Hugging Face parity tests), only to accept torch tensors; we pass Python floats, and the
    import cost every run 2.5 s before its first step. While `sys.modules["torch"]` is None,
    `import torch` raises ImportError, tensorboardX's own fallback. A process that has already
    imported torch keeps it."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TensorBoardLog(Hook):
    """After each evaluation, its new rows as scalars; at the end, hparams with final losses.

    One writer per model recorded here (`record_dirs[i]` for i in `models`); `loop` is the
    state after resuming: the rows it already holds were written by the run before."""

    def __init__(self, record_dirs: Sequence[Path], models: Sequence[int], loop: LoopState,
                 hparams: dict[str, Any], flops_per_token: int,
                 devices: Sequence[Any]) -> None:
        SummaryWriter = _summary_writer_class()
        purge = loop.step + 1 if loop.step else None
        self.writers = {i: SummaryWriter(str(Path(record_dirs[i]) / EVENTS_DIR),
                                         purge_step=purge, flush_secs=30) for i in models}
        self.written = {i: len(loop.rows[i]) for i in models}
        self.hparams = {k: v if isinstance(v, int | float | str) else str(v)
                        for k, v in hparams.items() if k in HPARAM_KEYS}
        self.flops_per_token, self.devices = flops_per_token, list(devices)

    def __call__(self, loop: LoopState) -> None:
        for i, writer in self.writers.items():
            for row in loop.rows[i][self.written[i]:]:
                for column, value in row.items():
                    if column not in AXES and _number(value):
                        writer.add_scalar(tag(column), value, row["step"])
                utilisation = (mfu(row["tokens_per_s"], self.flops_per_token, self.devices)
                               if _number(row.get("tokens_per_s")) else None)
                if utilisation is not None:  # None where the device's peak is unknown (CPU)
                    writer.add_scalar("mfu", utilisation, row["step"])
            self.written[i] = len(loop.rows[i])

    def finish(self, loop: LoopState) -> None:
        from tensorboardX.summary import hparams

        self(loop)
        for i, writer in self.writers.items():
            rows = loop.rows[i]
            final = {f"hparam/final_{k}": rows[-1][k] for k in ("train_loss", "val_loss")
                     if rows and _number(rows[-1].get(k))}
            for summary in hparams(self.hparams, final):
                writer.file_writer.add_summary(summary)
            for name, value in final.items():
                writer.add_scalar(name, value, loop.step)

    def close(self) -> None:
        """Flush and close every writer. One whose file cannot take its events (a full disk) is
        stopped all the same, its events dropped, and the OSError raised after the others:
        tensorboardX would flush it again at exit and print tracebacks from its exit hook and
        its writing thread."""
        failed: OSError | None = None
        for writer in self.writers.values():
            try:
                writer.close()
            except OSError as error:
                failed = failed or error
                _stop(writer.file_writer.event_writer)
        if failed is not None:
            raise failed


def _stop(events: Any) -> None:
    """Stop a tensorboardX EventFileWriter whose flush failed, as its `close` would have: its
    thread, then its file (closed even though the flush fails again)."""
    events._worker.stop()
    events._closed = True
    with contextlib.suppress(OSError):
        events._ev_writer.close()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)
