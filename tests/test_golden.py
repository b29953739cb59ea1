"""Golden losses: the trainer's numbers, bit for bit, on this project's pinned versions.

If one of these fails, training now computes something different from what it did when the
value was recorded. That is sometimes right (a fix to the loss, the data order or the
initialisation; a new lock in constraints.txt), but it must be on purpose: say in the commit
what changed and why, then record the new value here. A refactor of the loop, the hooks, the
batch type or the stages must leave them exactly as they are.

Recorded 2026-11-30 on the 2-core x86-64 CPU (jax 0.10.2, constraints.txt), before the
[stages] restructure. Bit for bit on one machine (tests/test_train.py checks two runs agree
exactly); across x86-64 CPU models XLA compiles other code, a few float32 ULPs apart: the tiny
run's val loss is 1.7900667 on the AMD EPYC it was recorded on and 1.7900665 on an Intel Xeon
(2026-12-01, every commit of that day alike). So the values hold to 1e-6 relative, about eight
ULPs: a change to the computation moves them by far more.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.config import Config, DataConfig, ModelConfig, TrainConfig
from tests.runs import pretrain

GOLDEN = 1e-6  # relative: a few float32 ULPs of CPU-model difference, not a change of the math

WORDS = ["alpha", "beta", "gamma", "delta", "loss", "falls", "with", "compute", "data",
         "params", "the", "a", "model", "scales"]


def corpus_text() -> str:
    """3,000 lines made by a formula, so the corpus is the same on every machine."""
    return "".join(" ".join(WORDS[(i * i + 3 * j) % len(WORDS)] for j in range(4 + i % 9)) + ".\n"
                   for i in range(3000))


def test_tiny_pretraining_run_gives_the_recorded_losses(tmp_path):
    (tmp_path / "corpus.txt").write_text(corpus_text())
    config = Config(
        model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32),
        data=DataConfig(source="files", paths=[str(tmp_path / "corpus.txt")], tokenizer="bytes",
                        cache_dir=str(tmp_path / "cache")),
        train=TrainConfig(tokens=40960, batch_size=8, eval_count=4, eval_batches=2),
    )
    summary = pretrain(config, tmp_path / "run")
    assert summary["steps"] == 160
    assert summary["final_val_loss"] == pytest.approx(1.7900667190551758, rel=GOLDEN)
    assert summary["final_train_loss"] == pytest.approx(2.2433481216430664, rel=GOLDEN)


@pytest.mark.slow
def test_core_must_show_command_gives_the_recorded_loss(tmp_path):
    """The [core] issue's command on the embedded stdlib corpus (BPE 4096). Its corpus is this
    interpreter's standard library, so the value holds for CPython 3.11.7 only."""
    if sys.version_info[:3] != (3, 11, 7):
        pytest.skip("the stdlib corpus differs between Python releases")
    subprocess.run(
        [Path(sys.executable).parent / "scaling-train", "model.n_layer=2", "model.d_model=64",
         "model.n_head=2", "model.n_ctx=64", "train.tokens=200000", "train.batch_size=16",
         "train.seed=0", f"hydra.run.dir={tmp_path}"],
        check=True, capture_output=True,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_val_loss"] == pytest.approx(5.590229034423828, rel=GOLDEN)
