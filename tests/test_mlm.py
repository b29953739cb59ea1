"""stage=mlm (issue 19): bidirectional attention, BERT's corruption, its accounting, a tiny run
that trains and resumes exactly, and the refusals."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from scaling.config import ConfigError, StageConfig, validate
from scaling.flops import attention_flops_per_token, flops_per_token
from scaling.masking import bert_corruption, eval_corruption, mask_token_id, masked_count
from scaling.model import GPT, GPTConfig, extend, init_cache, init_params
from scaling.sweep import run_id
from tests.runs import crash_at_step, pretrain

CURVE = ["step", "train_loss", "val_loss"]


def tiny(causal: bool) -> GPTConfig:
    return GPTConfig(vocab_size=97, n_layer=2, d_model=32, n_head=2, n_ctx=16, d_ff=64,
                     causal=causal)


@pytest.mark.parametrize("causal", [True, False])
def test_only_the_bidirectional_models_output_depends_on_later_tokens(causal):
    """nanodo's causality test both ways: the gradient of the output at t with respect to the
    position table's row s (which enters at position s alone) is 0 for every s > t exactly
    when the model is causal."""
    cfg, t = tiny(causal), 5
    params = init_params(cfg, seed=0)
    ids = jax.random.randint(jax.random.PRNGKey(2), (1, cfg.n_ctx), 0, cfg.vocab_size)

    def output_at_t(position_table):
        p = {**params, "wpe": {"embedding": position_table}}
        return jnp.sum(GPT(cfg).apply({"params": p}, ids)[0, t] ** 2)

    per_position = jnp.abs(jax.grad(output_at_t)(params["wpe"]["embedding"])).sum(axis=-1)
    assert jnp.all(per_position[: t + 1] > 0)
    assert jnp.all(per_position[t + 1:] == 0) if causal else jnp.all(per_position[t + 1:] > 0)


def test_a_bidirectional_model_refuses_to_decode():
    cfg = tiny(False)
    with pytest.raises(ValueError, match="cannot generate"):
        extend(cfg, init_params(cfg, 0), init_cache(cfg, 1, 4), jnp.zeros((1, 2), jnp.int32))
    # scaling-sample and every sampler say so in one line before any work (exit 2)
    from scaling.console import UsageError
    from scaling.sample import generate

    with pytest.raises(UsageError, match=r"model\.causal=false: a masked LM"):
        generate(cfg, init_params(cfg, 0), np.zeros((1, 2), np.int32), max_new_tokens=2,
                 temperature=0.0)


def test_corruption_statistics_over_a_large_batch():
    """15 % of the positions chosen (exactly k per window), of those 80 % [MASK], 10 % a random
    token, 10 % unchanged (Devlin et al. 2019), within 4 standard errors."""
    vocab, B, T = 500, 512, 128
    tokens = np.random.default_rng(0).integers(0, vocab, (B, T))
    batch = bert_corruption(tokens, 0.15, vocab, seed=3, step=7)
    chosen = batch.weights == 1
    k = masked_count(T, 0.15)
    assert k == 19 and np.all(chosen.sum(axis=1) == k)
    assert abs(chosen.mean() - 0.15) < 0.5 / T  # k = round(0.15 T)
    assert np.array_equal(batch.targets, tokens)
    assert np.all(batch.inputs[~chosen] == tokens[~chosen])
    n = chosen.sum()
    masked = (batch.inputs == mask_token_id(vocab))[chosen].mean()
    kept = (batch.inputs == tokens)[chosen].mean()
    # a random draw equals the original 1 time in `vocab`
    replaced = ((batch.inputs != tokens) & (batch.inputs != mask_token_id(vocab)))[chosen].mean()
    for share, expected in ((masked, 0.8), (replaced, 0.1 * (1 - 1 / vocab)),
                            (kept, 0.1 * (1 + 1 / vocab))):
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n), share
    assert batch.inputs.max() <= mask_token_id(vocab) and batch.inputs.min() >= 0


def test_corruption_is_a_pure_function_of_seed_and_step():
    tokens = np.arange(4 * 32).reshape(4, 32) % 50
    a, b = (bert_corruption(tokens, 0.3, 50, seed=1, step=9) for _ in range(2))
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("inputs", "weights"))
    for other in (bert_corruption(tokens, 0.3, 50, seed=1, step=10),
                  bert_corruption(tokens, 0.3, 50, seed=2, step=9)):
        assert not np.array_equal(a.weights, other.weights)
    fixed = eval_corruption(np.stack([tokens, tokens]), 0.3, 50)
    assert fixed.inputs.shape == (2, 4, 32) and not np.array_equal(fixed.weights[0],
                                                                   fixed.weights[1])


def test_bidirectional_attention_flops_golden_value():
    """No causal halving: 12·L·n_ctx·d; by hand for L=2, n_ctx=64, d=64, vocab 4097 padded to
    4160: 6·(2·12·64² + 4160·64) + 12·2·64·64 = 6·(98,304 + 266,240) + 98,304 = 2,285,568."""
    causal = GPTConfig(vocab_size=4097, n_layer=2, d_model=64, n_head=2, n_ctx=64, d_ff=256)
    bidirectional = dataclasses.replace(causal, causal=False)
    assert attention_flops_per_token(bidirectional) == 2 * attention_flops_per_token(causal)
    assert flops_per_token(bidirectional) == 2_285_568
    assert flops_per_token(causal) == 2_285_568 - 6 * 2 * 64 * 64


def mlm_config(tiny_config, **train):
    cfg = tiny_config(**{"tokens": 24_576, "eval_count": 4, **train})  # 96 steps of 8 x 32 tokens
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, causal=False),
                               stage=StageConfig(kind="mlm"))


def test_a_tiny_mlm_run_trains_and_resumes_exactly(tiny_config, tmp_path, monkeypatch):
    reference = pretrain(mlm_config(tiny_config), tmp_path / "reference")
    curve = pd.read_parquet(tmp_path / "reference/metrics.parquet")
    assert reference["status"] == "completed" and reference["stage"] == "mlm"
    assert curve["val_loss"].iloc[-1] < curve["val_loss"].iloc[0] - 0.5
    assert reference["tokens"] == reference["tokens_seen"] == 96 * 8 * 32
    assert reference["tokens_predicted"] == 96 * 8 * masked_count(32, 0.15) == 96 * 8 * 5
    assert reference["causal"] is False and reference["config"]["model"]["causal"] is False
    assert reference["vocab_size"] == reference["tokenizer_vocab_size"] + 1
    assert reference["flops_per_token_no_attn"] == reference["flops_per_token"] - 12 * 2 * 32 * 32

    config, run = mlm_config(tiny_config, checkpoint_every_steps=40), tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_at_step(patch, 60)
        with pytest.raises(RuntimeError, match="simulated crash"):
            pretrain(config, run)
    resumed = pretrain(config, run)
    assert resumed["resumed_from_step"] == 40
    pd.testing.assert_frame_equal(curve[CURVE], pd.read_parquet(run / "metrics.parquet")[CURVE])


def test_mlm_from_a_causal_run_only_with_the_objective_change_allowed(tiny_config, tmp_path):
    parent = tmp_path / "causal"
    pretrain(tiny_config(tokens=2048, eval_count=1), parent)
    child = mlm_config(tiny_config)
    child = dataclasses.replace(child, train=dataclasses.replace(child.train, tokens=2048),
                                stage=StageConfig(kind="mlm", init_from=str(parent)))
    with pytest.raises(ConfigError, match="allow_objective_change=true"):
        pretrain(child, tmp_path / "refused")
    allowed = dataclasses.replace(child, stage=dataclasses.replace(
        child.stage, allow_objective_change=True))
    summary = pretrain(validate(allowed), tmp_path / "allowed")
    assert summary["objective_change"] is True and summary["parent_run"] == "causal"


@pytest.mark.parametrize(("change", "names"), [
    ({"stage": {"mask_rate": 1.0}}, ["stage.mask_rate=1.0", "between 0 and 1"]),
    ({"stage": {"mask_rate": 0.0}}, ["stage.mask_rate=0.0"]),
    ({"model": {"causal": True}}, ["model.causal=True", "false with stage=mlm"]),
    ({"data": {"vocab_size": 65535}}, ["data.vocab_size=65535", "[MASK]"]),
    ({"stage": {"allow_objective_change": True}}, ["stage.allow_objective_change"]),
])
def test_bad_mlm_settings_are_refused_naming_the_field(tiny_config, change, names):
    cfg = mlm_config(tiny_config)
    cfg = dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), **fields)
                                      for group, fields in change.items()})
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    for name in names:
        assert name in str(error.value)


def test_a_causal_stage_refuses_a_bidirectional_model(tiny_config):
    cfg = tiny_config()
    with pytest.raises(ConfigError, match=r"model.causal=False .* true with stage=pretrain"):
        validate(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, causal=False)))


def test_no_room_for_the_mask_token_is_one_line():
    assert mask_token_id(256) == 256
    with pytest.raises(ConfigError, match=r"no room for the \[MASK\] token"):
        mask_token_id(65535)


def test_the_new_keys_at_their_defaults_keep_every_run_id():
    config = {"model": {"n_layer": 2, "d_model": 64, "n_head": 2, "n_ctx": 64},
              "data": {"source": "stdlib"}, "train": {"tokens": 200_000, "seed": 0}}
    with_defaults = {**config, "model": {**config["model"], "causal": True},
                     "stage": {"kind": "pretrain", "mask_rate": 0.15,
                               "allow_objective_change": False}}
    assert run_id(with_defaults) == run_id(config)
    mlm = {**config, "model": {**config["model"], "causal": False},
           "stage": {"kind": "mlm", "mask_rate": 0.3}}
    assert run_id(mlm).startswith("L2-d64-T64-D200k-s0-mlm0.3-")


def test_the_comparison_study_composes_both_objectives_on_one_grid():
    from tests.test_sweep import study_runs

    runs = study_runs("mlm_vs_clm_cpu")
    assert {grid: len(configs) for grid, configs in runs.items()} == {
        "causal": 12, "masked": 12, "mask_rates": 4}

    def cells(grid):
        return {(c.model.d_model, c.model.n_layer, c.train.tokens) for c in runs[grid]}

    assert cells("causal") == cells("masked")
    assert all(c.stage.kind == "pretrain" and c.model.causal for c in runs["causal"])
    assert all(c.stage.kind == "mlm" and not c.model.causal and c.stage.mask_rate == 0.15
               for c in runs["masked"])
    assert {c.stage.mask_rate for c in runs["mask_rates"]} == {0.3, 0.4}
    assert cells("mask_rates") <= cells("masked")
    for configs in runs.values():
        for c in configs:
            validate(OmegaConf.to_object(c))


def test_an_mlm_runs_masked_positions_are_its_validation_positions_less_each_windows_first(
        tiny_config, tmp_path):
    """At eval_mask_rate = stage.mask_rate the score reads the val_loss's own corrupted batches,
    its weights those of the chosen positions with j = 0 left out; so val_loss is the weighted
    mean of masked_positions_loss and the loss at the chosen j = 0 positions."""
    from scaling.stages.mlm import prepare
    from scaling.stages.parent import load_run
    from scaling.step import make_eval

    # the shapes and step count of the mlm runs above: their compiled programs are reused
    config = mlm_config(tiny_config, tokens=2048, eval_count=2, eval_mask_rate=0.3)
    config = dataclasses.replace(config, stage=StageConfig(kind="mlm", mask_rate=0.3))
    summary = pretrain(config, tmp_path / "mlm")
    curve = pd.read_parquet(tmp_path / "mlm/metrics.parquet")
    assert summary["masked_positions_loss"] == curve["masked_positions_loss"].iloc[-1]
    assert np.allclose(curve["masked_positions_loss"], curve["val_loss"], atol=0.05)

    stage = prepare(config).replicas[0].stage
    (scored,) = [m.data for m in stage.measurements if m.column == "masked_positions_loss"]
    validation = stage.eval_data
    assert np.array_equal(scored.inputs, validation.inputs)
    assert np.array_equal(scored.targets, validation.targets)
    first = np.zeros_like(validation.weights)
    first[..., 0] = validation.weights[..., 0]
    assert first.sum() > 0  # some windows chose their first position: it must be left out
    assert np.array_equal(scored.weights, validation.weights - first)

    params = jax.tree_util.tree_map(jnp.asarray, load_run(tmp_path / "mlm").params)
    evaluate = make_eval(stage.loss_fn)
    at_first = float(evaluate(params, dataclasses.replace(validation, weights=first)))
    rest, all_weight = scored.weights.sum(), validation.weights.sum()
    assert summary["final_val_loss"] == pytest.approx(
        (summary["masked_positions_loss"] * rest + at_first * first.sum()) / all_weight, rel=1e-5)


def test_a_causal_runs_masked_positions_loss_is_its_next_token_loss_at_those_tokens(
        tiny_config, tmp_path):
    """The tokens j >= 1 that the MLM validation's corruption chooses, each scored as
    -log p(x_j | x_<j) by the model's per-token next-token losses on the saved parameters."""
    from scaling.data import eval_windows, load_dataset
    from scaling.masking import next_token_positions_batch
    from scaling.model import token_losses
    from scaling.stages.common import model_config
    from scaling.stages.parent import load_run
    from scaling.sweep import canonical_data

    # the shapes and step count of the causal parent above: its compiled programs are reused
    config = tiny_config(tokens=2048, eval_count=1, eval_mask_rate=0.3)
    summary = pretrain(config, tmp_path / "causal")
    params = jax.tree_util.tree_map(jnp.asarray, load_run(tmp_path / "causal").params)
    dataset = load_dataset(canonical_data(config.data))
    T, model = config.model.n_ctx, model_config(config, dataset.vocab_size)
    windows = eval_windows(dataset.val, config.train.batch_size, T, config.train.eval_batches)
    chosen = eval_corruption(windows[..., :T], 0.3, dataset.vocab_size).weights  # [K, B, T]
    assert chosen[..., 0].sum() > 0  # the test sees j = 0 left out

    total = count = 0.0
    for window, positions in zip(windows, chosen, strict=True):
        losses = token_losses(GPT(model).apply({"params": params}, window[:, :T]), window[:, 1:])
        # losses[:, j - 1] is -log p(x_j | x_<j): token j is the target at position j - 1
        total += float(jnp.sum(losses[:, :T - 1] * positions[:, 1:]))
        count += float(positions[:, 1:].sum())
    assert summary["masked_positions_loss"] == pytest.approx(total / count, rel=1e-5)
    assert summary["masked_positions_loss"] != summary["final_val_loss"]

    weights = next_token_positions_batch(windows, 0.3).weights
    assert np.array_equal(weights[..., :T - 1], chosen[..., 1:]) and not weights[..., -1].any()


@pytest.mark.parametrize(("kind", "rate", "names"), [
    ("pretrain", 1.0, ["train.eval_mask_rate=1.0", "between 0 and 1"]),
    ("mlm", 0.0, ["train.eval_mask_rate=0.0", "between 0 and 1"]),
    ("finetune", 0.15, ["train.eval_mask_rate=0.15", "null with stage=finetune"]),
    ("sft", 0.15, ["train.eval_mask_rate=0.15", "null with stage=sft"]),
])
def test_bad_eval_mask_rates_are_refused_naming_the_field(tiny_config, kind, rate, names):
    cfg = mlm_config(tiny_config) if kind == "mlm" else tiny_config()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_mask_rate=rate))
    if kind in ("finetune", "sft"):
        cfg = dataclasses.replace(cfg, stage=StageConfig(kind=kind, init_from="parent"))
    if kind == "sft":
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="sft_stdlib",
                                                                paths=[]))
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert "\n" not in str(error.value)
    for name in names:
        assert name in str(error.value)
    allowed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_mask_rate=None))
    validate(allowed)


def test_eval_mask_rate_stays_out_of_run_ids_until_set():
    config = {"model": {"n_layer": 2, "d_model": 64, "n_head": 2, "n_ctx": 64},
              "data": {"source": "stdlib"}, "train": {"tokens": 200_000, "seed": 0}}
    unset = {**config, "train": {**config["train"], "eval_mask_rate": None}}
    scored = {**config, "train": {**config["train"], "eval_mask_rate": 0.15}}
    assert run_id(unset) == run_id(config)
    assert run_id(scored) != run_id(config)
