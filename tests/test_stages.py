"""Stages on the one loop: pretrain -> finetune and pretrain -> sft, and what they refuse."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from scaling.batch import LmBatch
from scaling.config import (
    Config,
    ConfigError,
    DataConfig,
    FreezeConfig,
    ModelConfig,
    StageConfig,
    TrainConfig,
    to_dict,
)
from scaling.data import DataError
from scaling.model import GPT, GPTConfig, cross_entropy, init_params
from scaling.record import read_summary
from scaling.sweep import run_id
from tests.runs import pretrain

PROSE = ("The quick brown fox jumps over the lazy dog while the small cat watches from the "
         "warm window. ")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory, corpus_dir):
    """The test corpus of Python source (the parent's) and English prose (the target)."""
    prose = tmp_path_factory.mktemp("prose")
    for i in range(60):
        words = PROSE.split()
        text = " ".join(words[(i + j) % len(words)] for j in range(400)) + ".\n"
        (prose / f"doc{i}.txt").write_text(text * 2)
    return {"code": str(corpus_dir / "*.py"), "prose": str(prose / "*.txt")}


def _config(cache_dir, paths, tokens=40_000, **stage) -> Config:
    return Config(
        model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32),
        data=DataConfig(source="files", paths=[paths], tokenizer="bytes",
                        cache_dir=str(cache_dir)),
        train=TrainConfig(tokens=tokens, batch_size=8, eval_count=6, eval_batches=2, lr=3e-3),
        stage=StageConfig(**stage),
    )


@pytest.fixture(scope="module")
def parent(tmp_path_factory, corpora, cache_dir):
    """A small model pretrained on Python source (bytes tokenizer)."""
    run_dir = tmp_path_factory.mktemp("parent")
    summary = pretrain(_config(cache_dir, corpora["code"], tokens=60_000), run_dir)
    assert summary["status"] == "completed"
    return run_dir


def _finetune(cache_dir, corpora, parent, **stage) -> Config:
    return _config(cache_dir, corpora["prose"], tokens=20_480, kind="finetune",
                   init_from=str(parent), **stage)


def test_finetune_starts_at_the_parents_loss_and_ends_below_training_from_scratch(
        tmp_path, corpora, cache_dir, parent):
    config = _finetune(cache_dir, corpora, parent)
    summary = pretrain(config, tmp_path / "ft")
    scratch = pretrain(_config(cache_dir, corpora["prose"], tokens=20_480), tmp_path / "scratch")
    metrics = pd.read_parquet(tmp_path / "ft" / "metrics.parquet")

    # Warmup starts at LR 0, so the first evaluation scores the parent's own parameters.
    from scaling.stages.finetune import prepare

    stage = prepare(config).replicas[0].stage
    parent_loss = float(jax.jit(jax.vmap(stage.loss_fn, in_axes=(None, 0)))(
        jax.tree_util.tree_map(jnp.asarray, stage.init_params()), stage.eval_data).mean())
    assert metrics["val_loss"].iloc[0] == pytest.approx(parent_loss, rel=1e-6)
    assert summary["final_val_loss"] < scratch["final_val_loss"]
    assert summary["final_val_loss"] < metrics["val_loss"].iloc[0]
    # Forgetting is visible: the parent's own validation split, scored at every evaluation.
    assert "source_val_loss" in metrics and metrics["source_val_loss"].notna().all()
    assert summary["source_val_loss"] == metrics["source_val_loss"].iloc[-1]
    parent_summary = read_summary(parent)
    assert summary["parent_run"] == parent.name
    assert summary["parent_tokens"] == parent_summary["tokens"]
    assert summary["parent_n_params_nonembed"] == parent_summary["n_params_nonembed"]
    assert summary["stage"] == "finetune"


def test_stage_config_is_part_of_the_run_id_and_pretrain_ids_are_unchanged(
        corpora, cache_dir, parent):
    plain = to_dict(_config(cache_dir, corpora["prose"]))
    without_stage = {k: v for k, v in plain.items() if k != "stage"}
    assert run_id(plain) == run_id(without_stage)  # runs recorded before stages keep their ids
    finetune = to_dict(_finetune(cache_dir, corpora, parent))
    frozen = to_dict(_finetune(cache_dir, corpora, parent, freeze=FreezeConfig(embeddings=True)))
    assert len({run_id(plain), run_id(finetune), run_id(frozen)}) == 3


def test_frozen_embeddings_stay_as_the_parent_left_them(tmp_path, corpora, cache_dir, parent):
    from scaling.checkpoint import Checkpointer

    config = _finetune(cache_dir, corpora, parent, freeze=FreezeConfig(embeddings=True, blocks=1))
    config = replace(config, train=replace(config.train, tokens=2560))
    pretrain(config, tmp_path)
    before = Checkpointer(parent / "checkpoints", 1, create=False)
    after = Checkpointer(tmp_path / "checkpoints", 1, create=False)
    old, new = (c.read_params(c.steps()[-1]) for c in (before, after))
    for name in ("wte", "wpe", "h_0"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, old[name], new[name])
    assert not np.array_equal(old["h_1"]["mlp"]["c_fc"]["kernel"],
                              new["h_1"]["mlp"]["c_fc"]["kernel"])


def _pairs(path: Path, n: int = 120) -> Path:
    lines = [json.dumps({"prompt": f"Q: add {i} and {i % 7}. A:",
                         "response": f" {i + i % 7}. Done."}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _sft(cache_dir, parent, pairs: Path, tokens=10_240) -> Config:
    config = _config(cache_dir, str(pairs), tokens=tokens, kind="sft", init_from=str(parent))
    return replace(config, data=replace(config.data, source="jsonl", val_fraction=0.2))


def test_sft_learns_the_responses(tmp_path, cache_dir, parent):
    summary = pretrain(_sft(cache_dir, parent, _pairs(tmp_path / "pairs.jsonl")), tmp_path / "r")
    metrics = pd.read_parquet(tmp_path / "r" / "metrics.parquet")
    assert summary["status"] == "completed" and summary["stage"] == "sft"
    assert metrics["val_loss"].iloc[-1] < 0.5 * metrics["val_loss"].iloc[0]
    assert 0 < summary["tokens"] < summary["tokens_seen"]  # response tokens only
    assert summary["sft_split"] == "by_example" and summary["sft_val_examples"] > 0


def test_prompt_targets_carry_no_gradient():
    """Changing the target of a weight-0 position (a prompt token's) changes neither the loss
    nor any gradient; changing a weighted (response) target does."""
    cfg = GPTConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, n_ctx=12, d_ff=32)
    params = init_params(cfg, 0)
    ids = np.random.default_rng(0).integers(1, 64, (2, 13)).astype(np.int32)
    weights = np.zeros((2, 12), np.float32)
    weights[:, 7:] = 1.0  # positions 0-6 predict prompt tokens

    def loss_and_grads(targets):
        def loss(p):
            return cross_entropy(GPT(cfg).apply({"params": p}, ids[:, :-1]), targets, weights)

        return jax.value_and_grad(loss)(params)

    base = loss_and_grads(ids[:, 1:])
    prompt_changed = ids[:, 1:].copy()
    prompt_changed[:, 3] = (prompt_changed[:, 3] + 5) % 64
    same = loss_and_grads(prompt_changed)
    assert same[0] == base[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, same[1], base[1])
    response_changed = ids[:, 1:].copy()
    response_changed[:, 9] = (response_changed[:, 9] + 5) % 64
    assert loss_and_grads(response_changed)[0] != base[0]


def test_all_ones_weights_give_the_unweighted_loss_exactly():
    cfg = GPTConfig(vocab_size=64, n_layer=1, d_model=16, n_head=2, n_ctx=12, d_ff=32)
    ids = np.random.default_rng(1).integers(0, 64, (3, 13)).astype(np.int32)
    logits = GPT(cfg).apply({"params": init_params(cfg, 0)}, ids[:, :-1])
    batch = LmBatch.causal(ids)
    assert cross_entropy(logits, ids[:, 1:], batch.weights) == cross_entropy(logits, ids[:, 1:])


@pytest.mark.parametrize(("change", "message"), [
    (lambda c, tmp: replace(c, stage=replace(c.stage, init_from=str(tmp / "nowhere"))),
     r"stage.init_from=.*nowhere is not a directory"),
    (lambda c, tmp: replace(c, stage=replace(c.stage, init_from=str(tmp))),
     r"stage.init_from=.* holds no run record"),
    (lambda c, tmp: replace(c, model=replace(c.model, d_model=64)),
     r"model.d_model=64 differs from the parent's 32"),
    (lambda c, tmp: replace(c, data=replace(c.data, tokenizer="bpe")),
     r"data.tokenizer=bpe data.vocab_size=4096 differs from the parent's bytes 256"),
    (lambda c, tmp: replace(c, stage=replace(c.stage, init_step="7")),
     r"stage.init_step=7 is step 7, which .* has no checkpoint of: it keeps steps"),
])
def test_a_parent_that_does_not_fit_is_refused_before_training(
        tmp_path, corpora, cache_dir, parent, change, message):
    config = change(_finetune(cache_dir, corpora, parent), tmp_path)
    with pytest.raises(ConfigError, match=message):
        pretrain(config, tmp_path / "run")
    assert read_summary(tmp_path / "run")["status"] == "failed"


def test_a_parent_without_checkpoints_is_refused(tmp_path, corpora, cache_dir, parent):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "summary.json").write_text((parent / "summary.json").read_text())
    config = replace(_finetune(cache_dir, corpora, parent),
                     stage=StageConfig(kind="finetune", init_from=str(copy)))
    with pytest.raises(ConfigError, match=r"has no checkpoint to start from"):
        pretrain(config, tmp_path / "run")


@pytest.mark.parametrize(("lines", "message"), [
    (['{"prompt": "a", "response": "b"}', "not json"], r"pairs.jsonl:2: malformed JSON"),
    (['{"prompt": "a"}'], r'pairs.jsonl:1: no "response" field'),
    (['{"prompt": "a", "response": ""}'], r'pairs.jsonl:1: the "response" field is empty'),
    ([json.dumps({"prompt": "x" * 200, "response": "y"})] * 40,
     r"none of the \d+ examples fits n_ctx\+1=33 tokens: the shortest has 203"),
])
def test_bad_sft_files_are_refused_naming_file_and_line(tmp_path, cache_dir, parent, lines,
                                                        message):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        pretrain(_sft(cache_dir, parent, pairs), tmp_path / "run")
    assert read_summary(tmp_path / "run")["status"] == "failed"


def test_scaling_train_refuses_a_missing_parent_in_one_line(tmp_path):
    result = subprocess.run(
        [Path(sys.executable).parent / "scaling-train", "stage=finetune",
         f"stage.init_from={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "stage.init_from=" in result.stderr and "is not a directory" in result.stderr
    assert "completed" not in (tmp_path / "run" / "summary.json").read_text()
