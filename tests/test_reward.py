"""stage=reward: the scalar head and the Bradley–Terry loss, a reward model trained on easy
comparisons on the shared loop, and the inputs it refuses (a reward model on comparisons of a
policy's own samples: tests/rlhf/test_collect.py)."""

import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from scaling.batch import ComparisonBatch
from scaling.config import Config, DataConfig, ModelConfig, StageConfig, TrainConfig
from scaling.model import (
    GPT,
    REWARD_HEAD,
    GPTConfig,
    init_params,
    pairwise_accuracy,
    pairwise_loss,
    reward_margins,
    rewards,
)
from scaling.record import read_summary
from scaling.rlhf import Comparison, read_comparisons, write_comparisons
from scaling.stages.parent import load_run
from tests.runs import pretrain

CFG = GPTConfig(vocab_size=64, n_layer=2, d_model=16, n_head=2, n_ctx=12, d_ff=32)
N_CTX = 128  # the runs' context: room for short sft_stdlib prompts and responses in bytes
BIN = Path(sys.executable).parent


def _params_with_head(seed: int = 0) -> dict:
    head = jax.random.normal(jax.random.PRNGKey(seed + 1), (CFG.d_model, 1))
    return {**init_params(CFG, seed), REWARD_HEAD: {"kernel": head}}


def _batch(seed: int = 0, b: int = 5) -> ComparisonBatch:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (2, b, CFG.n_ctx)).astype(np.int32)
    last = rng.integers(3, CFG.n_ctx, (2, b)).astype(np.int32)
    return ComparisonBatch(tokens[0], tokens[1], last[0], last[1], np.ones(b, np.float32))


def test_the_loss_is_minus_log_sigmoid_of_the_reward_margin():
    params, batch = _params_with_head(), _batch()
    weights = np.array([1, 1, 0, 1, 1], np.float32)  # a filler row counts for nothing
    batch = replace(batch, weights=weights)
    r = {}
    for side in ("chosen", "rejected"):  # the head on the final LayerNorm's output, by hand
        x = GPT(CFG).apply({"params": {k: v for k, v in params.items() if k != REWARD_HEAD}},
                           getattr(batch, side), unembed=False)
        last = getattr(batch, f"{side}_last")
        r[side] = np.array([float(x[i, last[i]] @ params[REWARD_HEAD]["kernel"][:, 0])
                            for i in range(len(last))])
    margin = r["chosen"] - r["rejected"]
    assert np.abs(margin).max() > 0.1  # a head that tells the windows apart
    expected = np.sum(weights * -np.log(1 / (1 + np.exp(-margin)))) / weights.sum()
    assert float(pairwise_loss(CFG, params, batch)) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(reward_margins(CFG, params, batch), margin, rtol=1e-5,
                               atol=1e-6)
    accuracy = np.sum(weights * (margin > 0)) / weights.sum()
    assert float(pairwise_accuracy(CFG, params, batch)) == pytest.approx(accuracy)


def test_swapping_chosen_and_rejected_flips_the_sign_of_the_margin():
    params, batch = _params_with_head(), _batch(1, b=8)
    swapped = ComparisonBatch(batch.rejected, batch.chosen, batch.rejected_last,
                              batch.chosen_last, batch.weights)
    margin = np.asarray(reward_margins(CFG, params, batch))
    np.testing.assert_allclose(reward_margins(CFG, params, swapped), -margin, atol=1e-6)
    assert float(pairwise_accuracy(CFG, params, swapped)) == pytest.approx(
        1 - float(pairwise_accuracy(CFG, params, batch)))


def test_the_reward_reads_the_last_real_token_and_nothing_after_it():
    params, batch = _params_with_head(2), _batch(2)
    last = batch.chosen_last
    base = np.asarray(rewards(CFG, params, batch.chosen, last))
    padded = batch.chosen.copy()
    for i, t in enumerate(last):
        padded[i, t + 1:] = 0
    np.testing.assert_array_equal(rewards(CFG, params, padded, last), base)
    earlier = batch.chosen.copy()
    earlier[:, 1] = (earlier[:, 1] + 1) % CFG.vocab_size
    assert np.all(np.asarray(rewards(CFG, params, earlier, last)) != base)


def test_a_zero_head_gives_every_comparison_ln_2_and_chance_accuracy():
    params = {**init_params(CFG, 0), REWARD_HEAD: {"kernel": jnp.zeros((CFG.d_model, 1))}}
    batch = _batch(3)
    assert float(pairwise_loss(CFG, params, batch)) == pytest.approx(np.log(2), rel=1e-6)
    assert float(pairwise_accuracy(CFG, params, batch)) == 0.5


# --- training on the shared loop --------------------------------------------------------

def run_config(cache_dir, tokens: int, **parts) -> Config:
    """A tiny run (2 layers, d_model 32, context N_CTX) of `tokens`; data and stage as given."""
    return Config(
        model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=N_CTX),
        data=parts.get("data") or DataConfig(tokenizer="bytes", cache_dir=str(cache_dir)),
        train=TrainConfig(tokens=tokens, batch_size=8, eval_count=5, eval_batches=4, lr=3e-3),
        stage=parts.get("stage") or StageConfig(),
    )


def train_parent(run_dir: Path, corpus_dir: Path, cache_dir: Path) -> Path:
    """A tiny model pretrained on Python source in `run_dir`, bytes tokenizer, context N_CTX."""
    data = DataConfig(source="files", paths=[str(corpus_dir / "*.py")], tokenizer="bytes",
                      cache_dir=str(cache_dir))
    assert pretrain(run_config(cache_dir, 40_960, data=data), run_dir)["status"] == "completed"
    return run_dir


@pytest.fixture(scope="module")
def parent(rlhf_parent) -> Path:
    return rlhf_parent


def train_sft_policy(parent: Path, run_dir: Path, cache_dir: Path) -> Path:
    """`parent` fine-tuned (SFT) on data=sft_stdlib for a few steps in `run_dir`: a policy to
    sample from, or to start DPO or PPO from (the session's is the `sft_policy` fixture)."""
    config = run_config(cache_dir, 10_240, data=DataConfig(
        source="sft_stdlib", tokenizer="bytes", cache_dir=str(cache_dir)),
        stage=StageConfig(kind="sft", init_from=str(parent)))
    assert pretrain(config, run_dir)["status"] == "completed"
    return run_dir


def refused(stage: str, init_from: Path, tmp_path: Path, cache_dir: Path,
            arguments: list[str],
            data: str = "comparisons") -> tuple[subprocess.CompletedProcess, dict | None]:
    """`scaling-train stage=STAGE` of a tiny model on `data` with `arguments`: the process
    and the run's record."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [BIN / "scaling-train", f"stage={stage}", f"stage.init_from={init_from}",
         f"data={data}", "data.tokenizer=bytes", f"data.cache_dir={cache_dir}",
         "model.n_layer=2", "model.d_model=32", "model.n_head=2", f"model.n_ctx={N_CTX}",
         "train.batch_size=8", f"hydra.run.dir={run_dir}", *arguments],
        capture_output=True, text=True, cwd=tmp_path)
    return result, read_summary(run_dir)


def reward_config(cache_dir, parent: Path, paths: list[str], tokens: int = 40_960,
                  val_fraction: float = 0.2) -> Config:
    """A reward model from `parent` on the comparisons of `paths`."""
    return run_config(cache_dir, tokens, data=DataConfig(
        source="comparisons", paths=paths, tokenizer="bytes", val_fraction=val_fraction,
        cache_dir=str(cache_dir)), stage=StageConfig(kind="reward", init_from=str(parent)))


def _easy(path: Path, prompts: int = 60) -> Path:
    """Comparisons where the chosen response is always the reference body, the rejected one
    punctuation: any reward model that reads its windows can learn them."""
    rng = random.Random(0)
    comparisons = []
    for i in range(prompts):
        prompt = f'def add_{i}(x):\n    """Return x plus {i}."""\n'
        for _ in range(2):
            garbage = "".join(rng.choice("@#$%^&*!?~|<>") for _ in range(rng.randint(8, 24)))
            comparisons.append(Comparison(prompt, f"    return x + {i}\n", f"    {garbage}\n",
                                          1.0, 0.2))
    write_comparisons(path, comparisons)
    return path


def test_a_reward_model_learns_easy_comparisons_on_the_shared_loop(tmp_path, cache_dir, parent):
    summary = pretrain(reward_config(cache_dir, parent, [str(_easy(tmp_path / "easy.jsonl"))]),
                       tmp_path / "rm")
    metrics = pd.read_parquet(tmp_path / "rm" / "metrics.parquet")
    assert summary["status"] == "completed" and summary["stage"] == "reward"
    # a zero head: every reward 0 at the first evaluation (after one step at warmup's LR 0)
    assert metrics["val_loss"].iloc[0] == pytest.approx(np.log(2), abs=1e-6)
    assert metrics["val_accuracy"].iloc[0] == 0.5
    assert metrics["train_accuracy"].iloc[-1] > 0.9
    assert metrics["val_accuracy"].iloc[-1] > 0.9
    assert metrics["val_loss"].iloc[-1] < 0.5 * np.log(2)
    assert summary["val_accuracy"] == metrics["val_accuracy"].iloc[-1]
    assert summary["n_comparisons"] + summary["n_val_comparisons"] == 120
    assert summary["comparisons_split"] == "by_prompt" and summary["comparisons_dropped"] == 0
    parent_summary = read_summary(parent)
    assert summary["n_params"] == parent_summary["n_params"] + 32  # the head: d_model -> 1
    assert summary["n_params_nonembed"] == parent_summary["n_params_nonembed"] + 32
    assert summary["parent_run"] == parent.name
    run = load_run(tmp_path / "rm")
    assert run.params[REWARD_HEAD]["kernel"].shape == (32, 1)
    np.testing.assert_array_equal(run.params["wpe"]["embedding"].shape, (N_CTX, 32))


def test_comparisons_are_split_by_prompt(tmp_path):
    from scaling.rlhf.windows import split_comparisons

    split = split_comparisons(read_comparisons(_easy(tmp_path / "easy.jsonl")), 0.2)
    assert not {c.prompt for c in split.train} & {c.prompt for c in split.val}
    assert split.prompts()[0] + split.prompts()[1] == 60


def _long(path: Path) -> Path:
    write_comparisons(path, [Comparison(f"def f{i}():\n", "    x = 1\n" * 40, "    y\n", 1, 0)
                             for i in range(30)])
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda tmp: ["data.tokenizer=bpe", f"data.paths=[{_easy(tmp / 'c.jsonl')}]"],
     "data.tokenizer=bpe data.vocab_size=4096 differs from the parent's bytes 256"),
    (lambda tmp: [f"data.paths=[{_empty_field(tmp / 'c.jsonl')}]"],
     'c.jsonl:2: the "chosen" field is empty'),
    (lambda tmp: [f"data.paths=[{_long(tmp / 'c.jsonl')}]"],
     f"comparisons fits n_ctx={N_CTX} tokens: the shortest has 41"),
])
def test_scaling_train_refuses_bad_reward_inputs_in_one_line(tmp_path, cache_dir, parent,
                                                             change, message):
    result, summary = refused("reward", parent, tmp_path, cache_dir, change(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert summary["status"] == "failed"


def _empty_field(path: Path) -> Path:
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": 1, "gold_rejected": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "chosen": " "}) + "\n")
    return path
