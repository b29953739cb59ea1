"""Training a config in a directory, as `scaling-train` does, for the tests."""

from pathlib import Path

from scaling.config import Config
from scaling.stages import run_stage


def pretrain(cfg: Config, run_dir: Path) -> dict:
    """Train the one model of `cfg` (any stage); its summary."""
    (summary,) = run_stage(cfg, run_dir)
    return summary


def pretrain_replicas(cfg: Config, group_dir: Path) -> list[dict]:
    """Train the train.replicas models of `cfg` as a group in `group_dir`; their summaries."""
    return run_stage(cfg, group_dir)
