"""Tiny sweeps launched as users launch them (`scaling-train -m`, `hydra/launcher=local`), and
what their run directories hold, for the fault tests."""

import json
import sys
from pathlib import Path

import pandas as pd

TRAIN = [sys.executable, "-c", "from scaling.cli import train; train()"]
REPORT = [sys.executable, "-c", "from scaling.cli import report; report()"]
CURVE = ["step", "train_loss", "val_loss"]


def run_args(corpus_dir: Path, cache_dir: Path, tokens: int = 8192,
             checkpoint_every: int = 4) -> list[str]:
    """Overrides for one tiny run (1 layer, a 32-token context, 256 tokens a step, byte
    tokens), its checkpoints every `checkpoint_every` steps."""
    return ["model.n_layer=1", "model.n_head=2", "model.n_ctx=32", f"train.tokens={tokens}",
            "train.batch_size=8", "train.eval_count=5", "train.eval_batches=1",
            f"train.checkpoint_every_steps={checkpoint_every}", "data=files",
            f"data.paths=[{corpus_dir}/*.py]", "data.tokenizer=bytes",
            f"data.cache_dir={cache_dir}"]


def sweep_args(corpus_dir: Path, cache_dir: Path, sweep_dir: Path, *axes: str,
               **run: int) -> list[str]:
    """A sweep over `axes` (`model.d_model=16,24`) of `run_args` runs in `sweep_dir`, two
    processes at a time."""
    return ["-m", *axes, *run_args(corpus_dir, cache_dir, **run), f"hydra.sweep.dir={sweep_dir}",
            "hydra/launcher=local", "hydra.launcher.n_jobs=2"]


def run_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's run directories (not its report)."""
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name != "report")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def curve(run_dir: Path) -> pd.DataFrame:
    """The run's evaluations: step, train and validation loss."""
    return pd.read_parquet(run_dir / "metrics.parquet")[CURVE]


def committed_steps(run_dir: Path) -> list[int]:
    """The steps of the run's committed checkpoints (Orbax renames a save into place once it is
    complete; a partial save keeps a temporary name)."""
    checkpoints = run_dir / "checkpoints"
    if not checkpoints.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
