"""Orbax checkpoints of the training state plus the run's bookkeeping, and resume.

A checkpoint holds the whole train state (params, optimizer, loss accumulators) and, as JSON,
everything the host needs to carry on as if never interrupted (eval rows so far, wall time).
Orbax commits a checkpoint by renaming its directory when complete, so a run killed mid-save
resumes from the previous one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpointer:
    """Save on a step interval or a wall-clock interval, whichever comes first; restore latest."""

    def __init__(self, directory: Path, keep: int) -> None:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start an asynchronous save; the state is copied off the device before it returns."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """The state at `step`, shaped and placed like `like`, and its JSON bookkeeping."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        )
        restored = self._manager.restore(step, args=args)
        return restored.state, restored.meta

    def close(self) -> None:
        """Wait for pending saves to be committed."""
        self._manager.wait_until_finished()
        self._manager.close()
