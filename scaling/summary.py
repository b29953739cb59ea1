"""What a model's `summary.json` says: while it trains (`start_summary`), once the loop has
ended (`finish_summary`: completed with its final and best losses, or diverged), and the run's
last line (`ending`). `scaling.record` writes it; the trainer fills it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax

from scaling.flops import mfu, record_counts
from scaling.hooks import LoopState
from scaling.record import SUMMARY, versions

if TYPE_CHECKING:
    from scaling.train import Replica, Stage


def start_summary(replica: Replica, i: int, k: int, total_steps: int, n_devices: int,
                  group_name: str | None) -> dict[str, Any]:
    """A model's record while it trains (status `running`)."""
    stage = replica.stage
    seen = total_steps * stage.tokens_per_step
    return {
        "status": "running",
        "stage": stage.name,
        **_counts(replica),
        **stage.record,
        "steps": total_steps,
        # D: every token read, unless the stage counts otherwise (SFT: response tokens)
        "tokens": stage.record.get("tokens", seen),
        "tokens_per_step": stage.tokens_per_step,
        "flops_per_token": stage.flops_per_token,
        "flops": stage.record.get("flops", seen * stage.flops_per_token),
        "seed": replica.seed,
        "device": jax.devices()[0].device_kind,
        "n_devices": n_devices,
        "replicas": k,
        **({"replica": i, "replica_group": group_name} if group_name else {}),
        "resumed_from_step": None,
        **stage.data_fingerprints,
        "versions": versions(),
        "config": replica.config,
    }


def _counts(replica: Replica) -> dict[str, Any]:
    """The model's parameters and FLOPs per token by part (`scaling.flops.count_fields`),
    for analyses that count N and C by another convention; the stage's own counts (of its
    parameter tree, a reward model's head included) are recorded over these."""
    stage = replica.stage
    model, vocab = replica.config.get("model"), stage.record.get("vocab_size")
    if not isinstance(model, dict) or vocab is None:
        return {}
    return record_counts(model, vocab, stage.flops_per_token)


def ending(summary: dict[str, Any], record_dir: Path) -> str:
    """A run's last line: its final and best validation loss (or where it diverged), and where
    its record is."""
    record = Path(record_dir) / SUMMARY
    if summary["status"] == "diverged":
        return f"diverged at step {summary['diverged_step']}; record in {record}"
    final, best = summary["final_val_loss"], summary["best_val_loss"]
    return (f"done: final val_loss {final:.4f}, best {best:.4f} at step "
            f"{summary['best_val_step']} of {summary['steps']}; record in {record}")


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def finish_summary(summary: dict[str, Any], loop: LoopState, i: int, stage: Stage,
                   tokens_per_s: float | None, wall_s: float, group_name: str | None) -> None:
    """Model i's record once the loop has ended: completed (final and best losses) or
    diverged, with the run's timings."""
    devices, k = loop.placement.devices, loop.k
    summary.update(
        wall_s=wall_s,
        compile_s=loop.compile_s,
        tokens_per_s=tokens_per_s,
        mfu=mfu(tokens_per_s, stage.flops_per_token, devices) if tokens_per_s else None,
    )
    if group_name:  # the whole group's rate, all replicas together
        summary.update(
            group_tokens_per_s=k * tokens_per_s if tokens_per_s else None,
            group_mfu=mfu(k * tokens_per_s, stage.flops_per_token, devices)
            if tokens_per_s else None,
        )
    rows = loop.rows[i]
    extra_losses = [column for m in stage.measurements for column in m.summary]
    if loop.diverged[i]:
        summary.update(status="diverged", diverged_step=loop.diverged[i],
                       final_train_loss=None, final_val_loss=None,
                       **dict.fromkeys(extra_losses))
        return
    final, best = rows[-1], min(rows, key=lambda r: r["val_loss"])
    summary.update(
        status="completed",
        final_train_loss=_finite_or_none(final["train_loss"]),
        final_val_loss=_finite_or_none(final["val_loss"]),
        best_val_loss=_finite_or_none(best["val_loss"]),
        best_val_step=best["step"],
        **{column: _finite_or_none(final[column]) for column in extra_losses},
    )
