"""Run types by name (`stage.kind`). Each picks data, loss and initialisation for the one
loop in `scaling.train`; `scaling.stages.common` does the rest the same way for all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scaling.config import Config
from scaling.stages import dpo, finetune, mlm, pretrain, reward, rl, sft
from scaling.stages.common import Prepared, run

STAGES: dict[str, Callable[[Config], Prepared]] = {
    "pretrain": pretrain.prepare,
    "finetune": finetune.prepare,
    "sft": sft.prepare,
    "reward": reward.prepare,
    "dpo": dpo.prepare,
    "rl": rl.prepare,
    "mlm": mlm.prepare,
}


def prepare(cfg: Config) -> Prepared:
    """The models of `cfg`'s stage, ready to train (what `scaling-bench` times)."""
    return STAGES[cfg.stage.kind](cfg)


def run_stage(cfg: Config, run_dir: Path) -> list[dict]:
    """Train `cfg` in `run_dir` as its stage says; the summaries of the models it recorded."""
    return run(cfg, run_dir, STAGES[cfg.stage.kind])
