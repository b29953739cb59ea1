"""stage=rl (PPO, Ouyang et al. 2022) on the shared loop: a tiny SFT policy against a tiny
proxy reward model raises the proxy's reward; a run killed inside a PPO iteration resumes to
the same numbers as one never stopped; and the inputs it refuses."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scaling.config import ConfigError, DataConfig, StageConfig
from scaling.data import DataError
from scaling.model import VALUE_HEAD
from scaling.record import read_summary
from scaling.rlhf import GoldScore, write_comparisons
from scaling.rlhf.collect import PromptChoice, collect, policy_prompts
from scaling.stages.parent import load_run
from scaling.stages.rl import load_reward_model, minibatch_rows, prompt_rows
from tests.runs import crash_at_step, pretrain
from tests.test_reward import refused, reward_config, run_config

# 8 prompts a rollout, 2 epochs of 2 minibatches: 4 steps of 4 responses per iteration
PPO = dict(rollout_prompts=16, minibatches=2, ppo_epochs=2, max_new_tokens=24)
STEP_TOKENS = 8 * 128  # a step reads 8 windows of n_ctx 128
COLUMNS = ["proxy_reward", "gold_reward", "kl_to_ref", "entropy", "clip_fraction",
           "approx_kl", "value_loss"]


@pytest.fixture(scope="module")
def sft(sft_policy) -> Path:
    """The policy PPO starts from, and its reference."""
    return sft_policy


def spaciousness(prompt: str, response: str, reference: str) -> GoldScore:
    """A stand-in gold for the tests: the share of spaces in the response."""
    share = response.count(" ") / max(len(response), 1)
    return GoldScore(share, {"spaces": share})


def spacious_comparisons(policy: Path, path: Path) -> Path:
    """Comparisons of the policy's own samples (4 to each of 120 train prompts), the one with
    more spaces chosen: in the policy's distribution, so the proxy grades its samples."""
    run = load_run(policy)
    choice = PromptChoice("train", 120)
    collection = collect(run, policy_prompts(run, choice), choice, spaciousness, n=4,
                         max_new_tokens=24)
    write_comparisons(path, collection.comparisons)
    return path


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, cache_dir, sft) -> Path:
    """A proxy from the SFT policy that prefers its more spacious samples."""
    directory = tmp_path_factory.mktemp("rm")
    config = reward_config(cache_dir, sft, [str(spacious_comparisons(sft, directory / "c.jsonl"))],
                           tokens=81_920)
    assert pretrain(config, directory / "rm")["status"] == "completed"
    return directory / "rm"


def rl_config(cache_dir, sft: Path, reward_model: Path, iterations: int, **train):
    config = run_config(cache_dir, iterations * 4 * STEP_TOKENS, data=DataConfig(
        source="sft_stdlib", tokenizer="bytes", cache_dir=str(cache_dir)),
        stage=StageConfig(kind="rl", init_from=str(sft), reward_from=str(reward_model), **PPO))
    config.train.batch_size, config.train.eval_batches = 8, 2  # 16 held-out prompts
    config.train.lr, config.train.eval_count = 3e-4, 6
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def test_ppo_raises_the_proxy_reward_and_resumes_inside_an_iteration_exactly(
        tmp_path, cache_dir, sft, reward_model, monkeypatch):
    config = rl_config(cache_dir, sft, reward_model, iterations=8)
    summary = pretrain(config, tmp_path / "ppo")
    metrics = pd.read_parquet(tmp_path / "ppo" / "metrics.parquet")
    assert summary["status"] == "completed" and summary["stage"] == "rl"
    assert summary["steps"] == 32 and summary["ppo_iterations"] == 8
    first, final = metrics.iloc[0], metrics.iloc[-1]
    assert final["proxy_reward"] > first["proxy_reward"] + 0.15, metrics[COLUMNS]
    assert final["rollout_reward"] > first["rollout_reward"] + 0.1
    # the first evaluation follows one step at warmup's LR 0: still the reference
    assert first["kl_to_ref"] == pytest.approx(0, abs=1e-4)
    assert first["clip_fraction"] == 0 and first["approx_kl"] == pytest.approx(0, abs=1e-9)
    assert final["kl_to_ref"] > 0.1 and final["approx_kl"] > 0
    assert metrics["gold_reward"].between(0, 1).all() and (metrics["entropy"] > 0).all()
    assert summary["proxy_reward"] == final["proxy_reward"]
    assert summary["kl_coef"] == 0.05 and summary["reward_run"] == reward_model.name
    rm = read_summary(reward_model)
    assert summary["rm_n_params_nonembed"] == rm["n_params_nonembed"]
    assert summary["n_params_nonembed"] == read_summary(sft)["n_params_nonembed"] + 32
    assert summary["rollout_flops"] == 8 * summary["rollout_flops_per_iteration"] > 0
    assert load_run(tmp_path / "ppo").params[VALUE_HEAD]["kernel"].shape == (32, 1)

    # killed at step 11, inside the third iteration (steps 9-12), resumed from its checkpoint
    # at step 10: that iteration's rollout comes back from the checkpoint, not drawn again
    resumed = rl_config(cache_dir, sft, reward_model, iterations=8, checkpoint_every_steps=5)
    with monkeypatch.context() as patch:
        crash_at_step(patch, 11)
        with pytest.raises(RuntimeError, match="simulated crash"):
            pretrain(resumed, tmp_path / "resumed")
    again = pretrain(resumed, tmp_path / "resumed")
    assert again["status"] == "completed" and again["resumed_from_step"] == 10
    pd.testing.assert_frame_equal(
        metrics.drop(columns="tokens_per_s"),
        pd.read_parquet(tmp_path / "resumed" / "metrics.parquet").drop(columns="tokens_per_s"))


@pytest.mark.parametrize(("change", "message"), [
    (lambda rm: ["stage.kl_coef=-0.1", f"stage.reward_from={rm}"], "stage.kl_coef=-0.1"),
    (lambda rm: ["data.tokenizer=bpe", f"stage.reward_from={rm}"],
     "data.tokenizer=bpe data.vocab_size=4096 differs from the parent's bytes 256"),
])
def test_scaling_train_refuses_bad_rl_inputs_in_one_line(tmp_path, cache_dir, sft,
                                                         reward_model, change, message):
    result, summary = refused("rl", sft, tmp_path, cache_dir, change(reward_model),
                              data="sft_stdlib")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
    assert summary is None or summary["status"] == "failed"


@pytest.mark.parametrize(("change", "error", "message"), [
    (dict(reward_from="sft"), ConfigError, "is a stage=sft run, not a reward model"),
    (dict(max_new_tokens=120), DataError, "no train prompt of 4317 leaves room for "
     "stage.max_new_tokens=120 and an eos within n_ctx=128: the shortest has 33 tokens"),
])
def test_a_run_that_is_no_reward_model_or_prompts_without_room_are_refused(
        tmp_path, cache_dir, sft, reward_model, change, error, message):
    config = rl_config(cache_dir, sft, reward_model, iterations=1)
    config.stage.reward_from = str(sft) if change.pop("reward_from", None) else str(reward_model)
    for key, value in change.items():
        setattr(config.stage, key, value)
    with pytest.raises(error, match=message):
        pretrain(config, tmp_path / "run")
    assert read_summary(tmp_path / "run")["status"] == "failed"


def test_a_reward_model_of_another_tokenizer_is_refused(cache_dir, sft, reward_model):
    config = rl_config(cache_dir, sft, reward_model, iterations=1)
    policy = load_run(sft)
    data = {**policy.summary["config"]["data"], "tokenizer": "bpe", "vocab_size": 512}
    bpe_policy = replace(policy, summary={**policy.summary, "tokenizer_source": {"cache": "c"},
                                          "config": {**policy.summary["config"], "data": data}})
    with pytest.raises(ConfigError, match=f"stage.reward_from={reward_model} reads tokenizer "
                       "bytes 256, the policy .* bpe 512 of c"):
        load_reward_model(config, bpe_policy)


def test_rollout_prompts_and_minibatches_are_pure_functions_of_the_seed():
    rows = prompt_rows(0, 3, 20, 8)
    np.testing.assert_array_equal(rows, prompt_rows(0, 3, 20, 8))
    assert len(set(rows)) == 8 and set(rows) != set(prompt_rows(0, 4, 20, 8))
    assert len(prompt_rows(0, 0, 3, 8)) == 8  # fewer prompts than a rollout: repeats
    for iteration in range(2):  # 2 epochs of 2 minibatches: each epoch covers the rollout once
        steps = [4 * iteration + u for u in range(4)]
        epochs = [np.concatenate([minibatch_rows(0, s, 8, 2, 2) for s in pair])
                  for pair in (steps[:2], steps[2:])]
        assert all(sorted(epoch) == list(range(8)) for epoch in epochs)
        assert list(epochs[0]) != list(epochs[1])
