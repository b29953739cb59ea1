"""scaling-compare: n samples per prompt from an SFT policy, scored by gold and labelled in
pairs (scaling.rlhf.collect), its files, the prompts it picks and refuses, and a reward model
trained on its comparisons."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from scaling.console import UsageError
from scaling.data import sft_stdlib, split_pairs
from scaling.rlhf import read_comparisons, sft_body
from scaling.rlhf.collect import PromptChoice, collect, policy_prompts, read_samples
from scaling.stages.parent import load_run
from tests.runs import pretrain
from tests.test_reward import N_CTX, reward_config

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def policy(sft_policy) -> Path:
    """A tiny SFT policy to sample."""
    return sft_policy


def test_scaling_compare_then_a_reward_model_on_the_policys_own_samples(
        tmp_path, cache_dir, policy):
    out = tmp_path / "comparisons.jsonl"
    result = subprocess.run(
        [BIN / "scaling-compare", policy, out, "--n", "3", "--prompts", "30",
         "--max-new-tokens", "24", "--seed", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "30 train prompts" in result.stdout and "comparisons ->" in result.stdout
    prompts = read_samples(tmp_path / "comparisons.samples.jsonl")
    assert len(prompts) == 30 and all(len(p.samples) == 3 for p in prompts)
    train_names = {e.name for e in policy_prompts(load_run(policy), PromptChoice("train"))}
    assert {p.name for p in prompts} <= train_names
    for p in prompts:
        for s in p.samples:
            assert 0 <= s.gold <= 1 and 1 <= s.new_tokens <= 24 and s.logprob < 0
            assert s.ended or s.new_tokens == 24  # each ends at eos or at the limit
    comparisons = read_comparisons(out)
    scores = {(p.prompt, s.response): s.gold for p in prompts for s in p.samples}
    for c in comparisons:  # labelled by gold, deterministically: the higher score wins
        assert scores[c.prompt, c.chosen] == c.gold_chosen > c.gold_rejected == scores[
            c.prompt, c.rejected]
    unequal = sum(a.gold != b.gold for p in prompts for i, a in enumerate(p.samples)
                  for b in p.samples[i + 1:] if a.response.strip() and b.response.strip())
    assert len(comparisons) == unequal > 30

    summary = pretrain(reward_config(cache_dir, policy, [str(out)], tokens=20_480,
                               val_fraction=0.3), tmp_path / "rm")
    metrics = pd.read_parquet(tmp_path / "rm" / "metrics.parquet")
    assert summary["status"] == "completed"
    assert metrics["val_accuracy"].between(0, 1).all() and len(metrics) == 5
    # a sample cut inside a UTF-8 character reads back as U+FFFD, 3 bytes: a few grow too long
    assert (summary["n_comparisons"] + summary["n_val_comparisons"]
            + summary["comparisons_dropped"]) == len(comparisons)
    assert summary["n_val_prompts"] > 0 and summary["val_comparisons_scored"] > 0


def test_the_policys_val_prompts_are_its_sft_validation_split(policy):
    val = policy_prompts(load_run(policy), PromptChoice("val"))
    assert [e.name for e in val] == [e.name for e in split_pairs(sft_stdlib(), 0.05).val]


@pytest.mark.parametrize(("text", "choice"), [
    ("train", PromptChoice("train")), ("val", PromptChoice("val")),
    ("40", PromptChoice("train", 40)), ("val:7", PromptChoice("val", 7))])
def test_prompt_choices(text, choice):
    assert PromptChoice.parse(text) == choice


@pytest.mark.parametrize(("args", "message"), [
    (["--n", "0"], "n=0: expected at least 1 sample per prompt"),
    (["--prompts", "test"], "--prompts test: expected train, val"),
    (["--gold", "nope"], "--gold nope: expected one of sft_body"),
])
def test_scaling_compare_refuses_bad_options_in_one_line(tmp_path, args, message):
    result = subprocess.run([BIN / "scaling-compare", tmp_path, tmp_path / "c.jsonl", *args],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert not (tmp_path / "c.jsonl").exists()


def test_prompts_without_room_for_the_response_are_refused_in_one_line(policy):
    run = load_run(policy)
    examples = policy_prompts(run, PromptChoice("val"))
    with pytest.raises(UsageError, match=f"no val prompt leaves room for max_new_tokens={N_CTX}"
                                         f" and an eos within n_ctx={N_CTX}: the shortest has"):
        collect(run, examples, PromptChoice("val"), sft_body, n=2, max_new_tokens=N_CTX)
