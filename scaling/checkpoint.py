"""Orbax checkpoints of the training state plus the run's bookkeeping, and resume.

A checkpoint holds the whole train state (params, optimizer, loss accumulators) and, as JSON,
everything the host needs to carry on as if never interrupted (eval rows so far, wall time).
Orbax commits a checkpoint by renaming its directory when complete, so a run killed mid-save
resumes from the previous one. A committed checkpoint whose files are damaged afterwards (a
torn write, a partial copy, overwritten bytes) is passed over for the one before it
(`restore_latest`). Overwritten bytes often decode without an error (TensorStore keeps no checksum
of a chunk's data), so each checkpoint's bookkeeping holds a digest of its state (`state_digest`),
checked on every restore.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from scaling.console import UsageError

logging.getLogger("absl").setLevel(logging.WARNING)
log = logging.getLogger("scaling")


# What reading a damaged checkpoint raises: TensorStore's ValueError for a truncated array,
# OSError for a missing or unreadable file, ValueError for bad JSON or a state unlike its digest,
# KeyError for bookkeeping without its keys. Orbax raises a bare Exception from TensorStore's
# error for an array chunk it cannot read (`_damage` looks for the cause).
UNREADABLE = (ValueError, OSError, KeyError)
DIGEST = "state_digest"  # the key of the state's digest in a checkpoint's bookkeeping


class CheckpointError(UsageError):
    """The run directory holds checkpoints, and none of them can be restored."""


def _describe(error: Exception) -> str:
    """The error's type and the start of its first line: TensorStore's run to pages of spec."""
    first = (str(error).splitlines() or [""])[0]
    return f"{type(error).__name__}: {first[:100]}{'...' if len(first) > 100 else ''}"


def _damage(error: BaseException) -> BaseException | None:
    """The error in `error`'s chain of causes or contexts that says a checkpoint cannot be read
    (one of UNREADABLE), or None for any other error (a bug, not damage). Contexts too: which
    of Orbax's concurrent reads fails first varies, and some raise inside another's handler."""
    while error is not None:
        if isinstance(error, UNREADABLE):
            return error
        error = error.__cause__ or error.__context__
    return None


@jax.jit
def _leaf_digests(state: Any) -> Any:
    """Two wrapping 32-bit sums of each leaf's bits, the second weighted by position (Fletcher's
    checksum), as a [2] uint32 array per leaf: a change of any bits changes them but with odds
    of about 2^-32. Computed where the state lives, sharded or not."""

    def words(x: jax.Array) -> jax.Array:
        if x.dtype == jnp.bool_:
            return x.ravel().astype(jnp.uint32)
        if x.dtype.itemsize < 4:
            unsigned = {1: jnp.uint8, 2: jnp.uint16}[x.dtype.itemsize]
            return jax.lax.bitcast_convert_type(x, unsigned).ravel().astype(jnp.uint32)
        return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()  # 8 bytes: 2 words each

    def digest(x: jax.Array) -> jax.Array:
        w = words(x)
        position = jnp.arange(1, w.size + 1, dtype=jnp.uint32)
        return jnp.stack([w.sum(dtype=jnp.uint32), (w * position).sum(dtype=jnp.uint32)])

    return jax.tree_util.tree_map(digest, state)


def state_digest(state: Any) -> list[int]:
    """The digest of a train state that its checkpoint's bookkeeping keeps (`_leaf_digests`,
    leaf after leaf), the same on every process of a multi-process run."""
    leaves = jax.tree_util.tree_leaves(_leaf_digests(state))
    return [int(v) for leaf in leaves for v in np.asarray(leaf.addressable_data(0))]


def _check_digest(state: Any, meta: dict) -> None:
    """Raise ValueError where the restored `state` differs from the one saved with `meta`
    (bytes overwritten on disk); bookkeeping saved before digests were is taken as it is."""
    if DIGEST in meta and state_digest(state) != meta[DIGEST]:
        raise ValueError("the restored state differs from the one saved (its digest): bytes of "
                         "it were overwritten")


def _drop_closed_loop_reports() -> None:
    """From now on, keep quiet about the reads of a checkpoint that failed to restore which
    end after the failure.

    Orbax stops at the first failed read and closes its event loop; TensorStore finishes the
    others and reports each to the closed loop, and Python prints every report as a traceback
    (hundreds for one damaged checkpoint), none about the run. Other reports still print.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook


class Checkpointer:
    """Save on a step interval or a wall-clock interval, whichever comes first; restore latest."""

    def __init__(self, directory: Path, keep: int, create: bool = True,
                 keep_steps: Collection[int] = ()) -> None:
        """Checkpoints in `directory`, the newest `keep` kept and those of `keep_steps` too (a
        WSD trunk's branch points); `create=False` only reads (a parent run's), and finds no
        steps where the directory is missing."""
        self.directory = Path(directory).absolute()
        if create:
            policy = ocp.checkpoint_managers.AnyPreservationPolicy([
                ocp.checkpoint_managers.LatestN(n=keep),
                ocp.checkpoint_managers.CustomSteps(sorted(keep_steps))])
            # cleanup: the partial saves of a process killed mid-save, each as big as a
            # checkpoint, would pile up over preemptions otherwise
            options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                                   cleanup_tmp_directories=True)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        elif self.directory.is_dir():
            options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                   save_interval_steps=0)
            absl = logging.getLogger("absl")
            level = absl.level
            absl.setLevel(logging.ERROR)  # "directory is read only": as asked
            try:
                self._manager = ocp.CheckpointManager(self.directory, options=options)
            finally:
                absl.setLevel(level)

    def steps(self) -> list[int]:
        """The committed checkpoints' steps, oldest first."""
        return sorted(self._manager.all_steps()) if self.directory.is_dir() else []

    def read_params(self, step: int) -> Any:
        """The parameters saved at `step`, as host arrays in their saved tree (no train state
        to shape them like: a parent run's, whatever its optimizer)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        state = self._manager.restore(step, args=args).state
        return jax.tree_util.tree_map(np.asarray, state["params"])

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start an asynchronous save of `state` and its bookkeeping `meta` (JSON), with the
        state's digest; the state is copied off the device before it returns."""
        meta = {**meta, DIGEST: state_digest(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)

    def _restore(self, step: int, like: Any, meta: dict) -> Any:
        """The state at `step`, shaped and placed like `like`, checked against the digest in
        its bookkeeping `meta`. Raises one of UNREADABLE, or an error caused by one, where it
        cannot be read or is not the state saved."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        state = self._manager.restore(step, args=args).state
        _check_digest(state, meta)
        return state

    def _meta(self, step: int) -> dict:
        """The JSON bookkeeping saved with the checkpoint at `step`, without its state."""
        args = ocp.args.Composite(meta=ocp.args.JsonRestore())
        return self._manager.restore(step, args=args).meta

    def restore(self, step: int, like: Any,
                check: Callable[[dict], None]) -> tuple[Any, dict]:
        """The checkpoint of `step` as (state, meta), the state shaped and placed like `like`;
        `check(meta)` sees its bookkeeping first and raises to refuse it. Raises
        CheckpointError where there is no such checkpoint or it cannot be read."""
        if step not in self.steps():
            raise CheckpointError(f"{self.directory} holds no checkpoint of step {step} (it "
                                  f"keeps {', '.join(map(str, self.steps())) or 'none'})")
        try:
            meta = self._meta(step)
            check(meta)
            return self._restore(step, like, meta), meta
        except Exception as error:
            damage = _damage(error)
            if damage is None:
                raise
            raise CheckpointError(f"{self.directory}/{step} cannot be restored "
                                  f"({_describe(damage)})") from error

    def restore_latest(self, like: Any,
                       check: Callable[[dict], None]) -> tuple[int, Any, dict] | None:
        """The newest checkpoint that restores, as (step, state, meta); None where there is none.

        `check(meta)` sees each checkpoint's bookkeeping before its state is read, and raises to
        refuse the whole directory (another run's checkpoints). A checkpoint that cannot be
        read is passed over, with a warning, for the one before it; once an older one restores,
        the unreadable ones are deleted, so that their steps can be saved again. When none
        restores, CheckpointError names them and nothing is deleted.
        """
        _drop_closed_loop_reports()  # before: the reports come while the error propagates
        unreadable: list[tuple[int, str]] = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                meta = self._meta(step)
            except Exception as error:
                self._unreadable(unreadable, step, error)
                continue
            check(meta)  # outside: a refusal is not a damaged checkpoint
            try:
                state = self._restore(step, like, meta)
            except Exception as error:
                self._unreadable(unreadable, step, error)
                continue
            for bad, _ in unreadable:
                self._manager.delete(bad)
            if unreadable:
                log.warning("deleted the unreadable checkpoints %s; resuming from step %d",
                            ", ".join(str(bad) for bad, _ in unreadable), step)
            return step, state, meta
        if not unreadable:
            return None
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored (delete it to train this run "
            "from the start): " + "; ".join(f"step {step}: {why}" for step, why in unreadable))

    def _unreadable(self, unreadable: list[tuple[int, str]], step: int, error: Exception) -> None:
        """Note, with a warning, that checkpoint `step` cannot be restored, where `error` says
        it is damaged (`_damage`); raise any other error again."""
        damage = _damage(error)
        if damage is None:
            raise error
        unreadable.append((step, _describe(damage)))
        log.warning("checkpoint %s/%d cannot be restored (%s)", self.directory, step,
                    unreadable[-1][1])

    def discard(self) -> None:
        """Delete every checkpoint (to train the run from the start)."""
        for step in self._manager.all_steps():
            self._manager.delete(step)

    def wait(self) -> None:
        """Wait until every save started is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves to be committed."""
        if not hasattr(self, "_manager"):  # read-only, of a directory that is not there
            return
        self.wait()
        self._manager.close()
