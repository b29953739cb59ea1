"""scaling-bon: the unbiased best-of-n estimator against enumeration of every subset, KL_bon,
the reward-model scoring of the pools, an end-to-end run on a tiny SFT policy and reward
model, and the inputs it refuses."""

import itertools
import json
import math
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from scaling.cli import bon
from scaling.console import UsageError
from scaling.model import REWARD_HEAD, GPTConfig, init_params, rewards
from scaling.rlhf.bon import (
    best_of_n,
    check_reward_model,
    kl_bon,
    n_grid,
    proxy_scores,
    rank_weights,
    windows,
)
from scaling.stages.parent import Parent
from tests.runs import pretrain
from tests.test_reward import _easy, reward_config


def _brute_force(proxy: np.ndarray, value: np.ndarray, n: int) -> float:
    """The mean over every n-subset of the value of its proxy argmax (np.argmax: the first of
    equal scores, in pool order, wins)."""
    winners = [subset[int(np.argmax(proxy[list(subset)]))]
               for subset in itertools.combinations(range(len(proxy)), n)]
    return float(np.mean(value[winners]))


@pytest.mark.parametrize("seed", range(6))
def test_the_estimator_is_the_mean_over_every_subset_ties_included(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 9))
    proxy = rng.integers(0, 3, m).astype(float)  # few values: ties in most pools
    gold = rng.normal(size=m)
    ns = list(range(1, m + 1))
    expected = [_brute_force(proxy, gold, n) for n in ns]
    np.testing.assert_allclose(best_of_n(proxy, gold, ns), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(best_of_n(proxy, proxy, ns),
                               [_brute_force(proxy, proxy, n) for n in ns], atol=1e-12)


def test_ties_go_to_the_earlier_sample_so_tied_pools_differ_only_in_order():
    proxy, gold = np.array([1.0, 1.0]), np.array([0.2, 0.8])
    assert best_of_n(proxy, gold, [2])[0] == 0.2
    assert best_of_n(proxy, gold[::-1], [2])[0] == 0.8


def test_n_1_is_the_pool_mean_and_n_m_the_proxy_favourites_gold():
    rng = np.random.default_rng(7)
    proxy, gold = rng.normal(size=300), rng.uniform(size=300)
    one, every = best_of_n(proxy, gold, [1, 300])
    assert one == pytest.approx(gold.mean(), rel=1e-12)
    assert every == pytest.approx(gold[np.argmax(proxy)], rel=1e-12)
    # more samples, a better proxy score: monotone in n when ranking by the proxy itself
    assert np.all(np.diff(best_of_n(proxy, proxy, n_grid(256))) > 0)


def test_rank_weights_are_a_distribution_over_ranks():
    w = rank_weights(256, 16)
    assert w.sum() == pytest.approx(1, abs=1e-12) and np.all(w[:15] == 0) and w[-1] == 16 / 256
    assert w[15] == pytest.approx(1 / math.comb(256, 16), rel=1e-9)  # C(15, 15)/C(256, 16)
    assert w[99] == pytest.approx(math.comb(99, 15) / math.comb(256, 16), rel=1e-9)
    for bad in (0, 257):
        with pytest.raises(ValueError, match=f"n={bad}"):
            rank_weights(256, bad)


def test_kl_of_best_of_n():
    np.testing.assert_allclose(kl_bon([1, 2, 4, 256]),
                               [0, np.log(2) - 0.5, np.log(4) - 0.75, np.log(256) - 255 / 256])
    assert kl_bon(1000) == pytest.approx(5.9088, abs=1e-4)  # Gao's n ≤ 1000: KL 5.9 nats
    with pytest.raises(ValueError, match="n=0"):
        kl_bon(0)
    assert n_grid(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256] and n_grid(6) == [1, 2, 4, 6]
    with pytest.raises(UsageError, match="n_max=0"):
        n_grid(0)


CFG = GPTConfig(vocab_size=64, n_layer=2, d_model=16, n_head=2, n_ctx=40, d_ff=32)


def test_scores_in_padded_batches_equal_each_window_alone():
    params = {**init_params(CFG, 0),
              REWARD_HEAD: {"kernel": jax.random.normal(jax.random.PRNGKey(1), (16, 1))}}
    rng = np.random.default_rng(0)
    eos = 0
    pools = [([eos, *rng.integers(1, 64, p).tolist()],
              [[*rng.integers(1, 64, k).tolist(), *([eos] if k % 2 else [])]
               for k in rng.integers(1, 12, 5)]) for p in (3, 9)]
    windows_W, last_W = windows(pools, eos)
    assert all(w[-1] == eos and w[0] == eos for w in windows_W) and len(windows_W) == 10
    scores = proxy_scores(CFG, params, windows_W, last_W, eos, batch_size=4)  # 2 repeats
    ids_WxT = np.full((len(windows_W), CFG.n_ctx), eos, np.int32)  # padded as trained
    for row, window in enumerate(windows_W):
        ids_WxT[row, :len(window)] = window
    np.testing.assert_allclose(scores, rewards(CFG, params, ids_WxT, last_W), rtol=1e-5,
                               atol=1e-6)
    assert np.ptp(scores) > 0.1


def _run(tokenizer: str, model: dict, head: bool = True) -> Parent:
    summary = {"stage": "reward" if head else "sft", "vocab_size": 256 if tokenizer == "bytes"
               else 4096, "config": {"model": model, "data": {"tokenizer": tokenizer}},
               "corpus_cache": f"stdlib-{tokenizer}"}
    return Parent(Path(f"runs/{tokenizer}"), summary, 1,
                  {REWARD_HEAD: {}} if head else {})


MODEL = {"n_layer": 2, "d_model": 32, "n_head": 2, "n_ctx": 64, "d_ff": None, "dtype": "auto",
         "attention": "auto", "remat": "none", "scan_layers": False, "loss_chunk": 0}


def test_reward_models_that_cannot_score_the_policys_samples_are_refused():
    policy = _run("bytes", MODEL, head=False)
    assert check_reward_model(policy, _run("bytes", MODEL), 64).n_ctx == 64
    with pytest.raises(UsageError, match=r"tokenizer bpe vocab_size=4096 .* differs from the "
                                         "policy's bytes"):
        check_reward_model(policy, _run("bpe", MODEL))
    with pytest.raises(UsageError, match="stage=sft has no reward head"):
        check_reward_model(policy, _run("bytes", MODEL, head=False))
    with pytest.raises(UsageError, match=r"n_ctx=64 is shorter than the longest window .* of 65"):
        check_reward_model(policy, _run("bytes", MODEL), 65)


@pytest.mark.parametrize(("args", "message"), [
    (["--n-max", "0"], "--n-max 0: expected at least 1"),
    (["--n-max", "8", "--pool", "4"], "--pool 4: expected at least --n-max 8"),
    (["--prompts", "test"], "--prompts test: expected train, val"),
    (["--gold", "nope"], "--gold nope: expected one of sft_body"),
    (["--seed", "0"], "share a directory name"),  # the same reward model twice
])
def test_bad_options_are_refused_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        bon([str(tmp_path), str(tmp_path), str(tmp_path), str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.strip().count("\n") == 0 and message in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def policy_and_rm(tmp_path_factory, cache_dir, sft_policy) -> tuple[Path, Path]:
    """A tiny SFT policy, and a reward model of a few steps from it. (Prompts without room
    for the response: refused by `collect.draw`, tests/rlhf/test_collect.py.)"""
    policy = sft_policy
    data = tmp_path_factory.mktemp("easy")
    rm = tmp_path_factory.mktemp("rm")
    summary = pretrain(reward_config(cache_dir, policy, [str(_easy(data / "easy.jsonl"))],
                                     tokens=8_192), rm)
    assert summary["status"] == "completed"
    return policy, rm


def test_scaling_bon_writes_the_table_of_each_reward_model(tmp_path, capsys, policy_and_rm):
    policy, rm = policy_and_rm
    out = tmp_path / "bon"
    bon([str(policy), str(rm), str(out), "--n-max", "4", "--pool", "6",
         "--prompts", "val:3", "--max-new-tokens", "16"])
    assert "3 val prompts" in capsys.readouterr().out
    table = pd.read_parquet(out / "bon.parquet")
    pool = pd.read_parquet(out / "pool.parquet")
    per_prompt = pd.read_parquet(out / "bon_prompts.parquet")
    record = json.loads((out / "bon.json").read_text())
    assert len(pool) == 18 and pool.groupby("prompt").size().eq(6).all()
    assert record["pool"] == 6 and record["n"] == [1, 2, 4] and record["sampling_s"] > 0
    size = json.loads((rm / "summary.json").read_text())["n_params_nonembed"]
    proxy = pool[f"proxy:{rm.name}"].to_numpy().reshape(3, 6)
    gold = pool["gold"].to_numpy().reshape(3, 6)
    rows = table
    assert rows["n"].tolist() == [1, 2, 4] and (rows["rm_n_params_nonembed"] == size).all()
    assert (rows["n_prompts"] == 3).all() and rows["rm_run"].eq(rm.name).all()
    np.testing.assert_allclose(rows["kl"], kl_bon(np.array([1, 2, 4])))
    np.testing.assert_allclose(rows["d"], np.sqrt(rows["kl"]))
    expected = np.mean([best_of_n(proxy[p], gold[p], [1, 2, 4]) for p in range(3)], axis=0)
    np.testing.assert_allclose(rows["gold_reward"], expected, rtol=1e-6)
    assert rows["gold_reward"].iloc[0] == pytest.approx(gold.mean())
    assert np.all(np.diff(rows["proxy_reward"]) > 0)
    assert len(per_prompt) == 3 * 3
    assert per_prompt.groupby("n")["gold_reward"].mean().to_numpy() == \
        pytest.approx(table["gold_reward"].to_numpy())
