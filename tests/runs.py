"""Training a config in a directory, as `scaling-train` does, for the tests."""

from pathlib import Path

from scaling import step as step_module
from scaling.config import Config
from scaling.stages import run_stage


def pretrain(cfg: Config, run_dir: Path) -> dict:
    """Train the one model of `cfg` (any stage); its summary."""
    (summary,) = run_stage(cfg, run_dir)
    return summary


def pretrain_replicas(cfg: Config, group_dir: Path) -> list[dict]:
    """Train the train.replicas models of `cfg` as a group in `group_dir`; their summaries."""
    return run_stage(cfg, group_dir)


def crash_at_step(monkeypatch, crash_step: int) -> None:
    """Make the next run raise at its `crash_step`-th step, as a crash mid-training would."""
    original = step_module.make_train_step

    def crashing(loss_fn, tx):
        step = original(loss_fn, tx)
        calls = {"n": 0}

        def wrapped(state, batch):
            calls["n"] += 1
            if calls["n"] == crash_step:
                raise RuntimeError("simulated crash")
            return step(state, batch)

        return wrapped

    monkeypatch.setattr(step_module, "make_train_step", crashing)
