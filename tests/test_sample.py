"""Sampling with a KV cache: the cache gives the full pass's logits, padding changes nothing,
eos ends a sample, and `scaling-sample` prints a trained run's samples or one line of error."""

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.cli import sample
from scaling.config import Config, DataConfig, ModelConfig, TrainConfig
from scaling.console import UsageError
from scaling.model import GPT, GPTConfig, extend, init_cache, init_params
from scaling.sample import Policy, _draw, generate, pad_prompts
from tests.runs import pretrain

CFG = GPTConfig(vocab_size=100, n_layer=2, d_model=32, n_head=2, n_ctx=24, d_ff=64)
PROMPTS = [[5, 17, 3], [8, 1, 44, 2, 9, 60, 7], [31]]


@functools.cache
def _params(cfg: GPTConfig = CFG) -> dict:
    """Initial parameters with the embedding scaled up, for logits of a trained model's size
    (several units) rather than an initial one's (hundredths)."""
    params = init_params(cfg, 0)
    return {**params, "wte": {"embedding": params["wte"]["embedding"] * 6}}


@jax.jit
def _full_pass(params: dict, ids_1xT: jax.Array) -> jax.Array:
    return GPT(CFG).apply({"params": params}, ids_1xT)


def _logits(params: dict, ids: list[int]) -> np.ndarray:
    """The full forward pass's logits [len(ids), V]: one compiled shape, padded to n_ctx (the
    padding after the tokens does not reach them)."""
    return np.asarray(_full_pass(params, jnp.array([ids + [0] * (CFG.n_ctx - len(ids))])))[
        0, :len(ids)]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_gives_the_full_passs_logits_at_every_position(scan_layers):
    cfg = GPTConfig(**{**CFG.__dict__, "scan_layers": scan_layers})
    params = _params(cfg)
    ids_BxT = jax.random.randint(jax.random.PRNGKey(1), (3, cfg.n_ctx), 0, cfg.vocab_size)
    full_BxTxV = GPT(cfg).apply({"params": params}, ids_BxT)
    assert float(jnp.max(jnp.abs(full_BxTxV))) > 3  # logits of a realistic size

    read = jax.jit(functools.partial(extend, cfg))
    chunks = [read(params, init_cache(cfg, 3, cfg.n_ctx), ids_BxT[:, :5])]  # a prompt,
    for t in range(5, cfg.n_ctx):  # then one token a step
        chunks.append(read(params, chunks[-1][1], ids_BxT[:, t:t + 1]))
    cached_BxTxV = jnp.concatenate([logits for logits, _ in chunks], axis=1)
    assert float(jnp.max(jnp.abs(cached_BxTxV - full_BxTxV))) <= 1e-5


def test_padding_on_either_side_is_skipped_by_the_cache():
    params = _params()
    prompt = PROMPTS[1]
    alone = _logits(params, prompt)
    pad = [0] * 4
    read = jax.jit(functools.partial(extend, CFG))
    for ids, valid in [(pad + prompt, [0] * 4 + [1] * 7), (prompt + pad, [1] * 7 + [0] * 4),
                       (pad[:2] + prompt + pad[:2], [0, 0] + [1] * 7 + [0, 0])]:
        valid = np.array([valid], bool)
        logits, _ = read(params, init_cache(CFG, 1, 11), jnp.array([ids]), jnp.array(valid))
        assert np.max(np.abs(np.asarray(logits)[0][valid[0]] - alone)) <= 1e-5


def _greedy_by_full_passes(params: dict, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(_logits(params, ids)[-1, :CFG.vocab_size])))
    return ids[len(prompt):]


def test_greedy_decoding_is_deterministic_and_the_full_passs_argmax():
    params = _params()
    ids, mask = pad_prompts(PROMPTS)
    first = generate(CFG, params, ids, mask, max_new_tokens=10, temperature=0)
    again = generate(CFG, params, ids, mask, max_new_tokens=10, temperature=0)
    np.testing.assert_array_equal(first.tokens_BxNxT, again.tokens_BxNxT)
    assert first.tokens_BxNxT.shape == (3, 1, 10)
    np.testing.assert_array_equal(first.lengths_BxN, [[10]] * 3)
    for b, prompt in enumerate(PROMPTS):
        assert first.tokens_BxNxT[b, 0].tolist() == _greedy_by_full_passes(params, prompt, 10)
    # the same parameters stacked by layer, as model.scan_layers keeps them
    scanned = {"h": jax.tree_util.tree_map(lambda *layers: jnp.stack(layers), params["h_0"],
                                           params["h_1"]),
               **{k: v for k, v in params.items() if not k.startswith("h_")}}
    scan_cfg = GPTConfig(**{**CFG.__dict__, "scan_layers": True})
    np.testing.assert_array_equal(
        generate(scan_cfg, scanned, ids, mask, max_new_tokens=10, temperature=0).tokens_BxNxT,
        first.tokens_BxNxT)


def test_padded_and_unpadded_prompts_give_the_same_tokens():
    params = _params()
    alone = [generate(CFG, params, np.array([p]), max_new_tokens=8, temperature=0)
             .tokens_BxNxT[0, 0].tolist() for p in PROMPTS]
    left_ids, left_mask = pad_prompts(PROMPTS, pad_id=99)
    right_ids = np.array([p + [0] * (7 - len(p)) for p in PROMPTS])
    right_mask = np.array([[1] * len(p) + [0] * (7 - len(p)) for p in PROMPTS], bool)
    for ids, mask in [(left_ids, left_mask), (right_ids, right_mask)]:
        batch = generate(CFG, params, ids, mask, max_new_tokens=8, temperature=0)
        assert batch.tokens_BxNxT[:, 0].tolist() == alone


def test_top_k_1_and_a_tiny_top_p_are_greedy():
    params = _params()
    ids, mask = pad_prompts(PROMPTS)
    greedy = generate(CFG, params, ids, mask, max_new_tokens=8, temperature=0).tokens_BxNxT
    for options in [{"top_k": 1}, {"top_p": 1e-6}]:
        drawn = generate(CFG, params, ids, mask, max_new_tokens=8, temperature=1.0, n=4,
                         rng=jax.random.PRNGKey(7), **options).tokens_BxNxT
        np.testing.assert_array_equal(drawn, np.repeat(greedy, 4, axis=1))


def test_samples_are_reproducible_independent_and_within_top_k_with_the_models_logprobs():
    params = _params()
    ids, mask = pad_prompts(PROMPTS)
    kwargs = dict(max_new_tokens=10, temperature=1.0, top_k=5, n=6, rng=jax.random.PRNGKey(3))
    samples = generate(CFG, params, ids, mask, **kwargs)
    np.testing.assert_array_equal(samples.tokens_BxNxT,
                                  generate(CFG, params, ids, mask, **kwargs).tokens_BxNxT)
    assert len({tuple(row) for row in samples.tokens_BxNxT[1].tolist()}) > 1
    for b, prompt in enumerate(PROMPTS):
        for i in range(6):
            new = samples.tokens_BxNxT[b, i].tolist()
            logits_TxV = _logits(params, prompt + new)[len(prompt) - 1:-1, :CFG.vocab_size]
            logprobs_TxV = np.asarray(jax.nn.log_softmax(logits_TxV))
            picked = logprobs_TxV[np.arange(10), new]
            assert np.all((logprobs_TxV > picked[:, None]).sum(axis=1) < 5)  # rank below k
            np.testing.assert_allclose(samples.logprobs_BxNxT[b, i], picked, atol=1e-4)


def test_padding_ids_of_the_vocabulary_are_never_drawn():
    params = _params()
    embedding = params["wte"]["embedding"]
    # the padding rows (ids 100-127) made the likeliest, were they allowed
    boosted = embedding.at[CFG.vocab_size:].set(jnp.mean(embedding, axis=0) * 1e3)
    params = {**params, "wte": {"embedding": boosted}}
    samples = generate(CFG, params, np.array([PROMPTS[0]]), max_new_tokens=16, n=32,
                       rng=jax.random.PRNGKey(0))
    assert int(samples.tokens_BxNxT.max()) < CFG.vocab_size


@pytest.mark.parametrize(("policy", "expected"), [
    (Policy(), [0.5, 0.3, 0.15, 0.05, 0]),
    (Policy(top_k=2), [0.625, 0.375, 0, 0, 0]),
    (Policy(top_p=0.7), [0.625, 0.375, 0, 0, 0]),  # 0.5 < 0.7 <= 0.5 + 0.3
    (Policy(top_p=0.81), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0, 0]),
    (Policy(top_k=3, top_p=0.5), [1, 0, 0, 0, 0]),
    (Policy(temperature=2.0), np.sqrt([0.5, 0.3, 0.15, 0.05, 0]) / np.sqrt(
        [0.5, 0.3, 0.15, 0.05]).sum()),
])
def test_draws_follow_the_filtered_distribution_and_report_the_models_logprob(policy, expected):
    probs = np.array([0.5, 0.3, 0.15, 0.05, 1e-3])  # the last id is the vocabulary's padding
    logits_NxV = jnp.tile(jnp.log(jnp.array(probs, jnp.float32)), (20_000, 1))
    tokens, logprobs = _draw(logits_NxV, jax.random.PRNGKey(0), policy, vocab_size=4)
    frequencies = np.bincount(np.asarray(tokens), minlength=5) / 20_000
    np.testing.assert_allclose(frequencies, expected, atol=0.012)
    model = np.log(probs[:4] / probs[:4].sum())
    np.testing.assert_allclose(logprobs, model[np.asarray(tokens)], rtol=1e-5)


def test_eos_ends_a_sample_with_padding_after_it():
    params = _params()
    ids, mask = pad_prompts(PROMPTS)
    greedy = generate(CFG, params, ids, mask, max_new_tokens=12, temperature=0)
    eos = int(greedy.tokens_BxNxT[1, 0, 3])  # what the second prompt draws 4th
    ended = generate(CFG, params, ids, mask, max_new_tokens=12, temperature=0, eos_id=eos)
    for b in range(3):
        tokens = greedy.tokens_BxNxT[b, 0].tolist()
        length = tokens.index(eos) + 1 if eos in tokens else 12
        assert int(ended.lengths_BxN[b, 0]) == length
        assert ended.tokens_BxNxT[b, 0].tolist() == tokens[:length] + [eos] * (12 - length)
        assert np.all(ended.logprobs_BxNxT[b, 0, length:] == 0)
        assert np.all(ended.logprobs_BxNxT[b, 0, :length] < 0)
    assert int(ended.lengths_BxN[1, 0]) <= 4


@pytest.mark.parametrize(("change", "message"), [
    ({"n": 0}, r"n=0: expected at least 1"),
    ({"max_new_tokens": 0}, r"max_new_tokens=0"),
    ({"temperature": -1.0}, r"temperature=-1.0"),
    ({"top_p": 0.0}, r"top_p=0.0"),
    ({"prompts": [list(range(25))]}, r"a prompt of 25 tokens is longer than n_ctx=24"),
    ({"max_new_tokens": 18}, r"max_new_tokens=18 after a prompt of 7 tokens exceeds n_ctx=24: "
                             r"at most 17"),
    ({"prompts": [[5, 100]]}, r"prompt token 100 is not in the vocabulary"),
    ({"prompts": [[1], []]}, r"a prompt has no tokens"),
    ({"rng": None}, r"pass rng"),
])
def test_bad_input_is_refused_naming_the_value(change, message):
    options = {"prompts": PROMPTS, "max_new_tokens": 4, "n": 2, "temperature": 1.0,
               "rng": jax.random.PRNGKey(0), **change}
    ids, mask = pad_prompts(options.pop("prompts"))
    with pytest.raises(UsageError, match=message):
        generate(CFG, _params(), ids, mask, **options)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus_dir, cache_dir) -> Path:
    """A tiny model trained on Python source (bytes tokenizer, n_ctx 32), as scaling-train
    trains it."""
    run_dir = tmp_path_factory.mktemp("run")
    config = Config(
        model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32),
        data=DataConfig(source="files", paths=[str(corpus_dir / "*.py")], tokenizer="bytes",
                        cache_dir=str(cache_dir)),
        train=TrainConfig(tokens=20_480, batch_size=8, eval_count=2, eval_batches=1, lr=3e-3),
    )
    assert pretrain(config, run_dir)["status"] == "completed"
    return run_dir


def _sample(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        sample(list(argv))
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def test_scaling_sample_prints_n_samples_of_a_trained_run(capsys, run_dir):
    status, out, _ = _sample(capsys, str(run_dir), "--prompt", "def ", "--n", "3",
                             "--max-new-tokens", "12", "--top-k", "20", "--seed", "1")
    assert status == 0
    headers = [line for line in out.splitlines() if line.startswith("--- sample ")]
    assert headers == [h for h in headers if " of 3: " in h] and len(headers) == 3
    texts = out.split("---\n")[1:]
    assert all(text.startswith("def ") for text in texts)
    # greedy: the same text twice; the default length fills the context
    greedy = [_sample(capsys, str(run_dir), "--prompt", "import", "--temperature", "0")[1]
              for _ in range(2)]
    assert greedy[0] == greedy[1] and "import" in greedy[0]
    assert "25 new tokens" in greedy[0] or "ended at eos" in greedy[0]  # 32 - eos - 'import'


def test_the_scaling_sample_command_runs(run_dir):
    result = subprocess.run(
        [Path(sys.executable).parent / "scaling-sample", str(run_dir), "--prompt", "class",
         "--n", "2", "--max-new-tokens", "5"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("--- sample ") == 2


def test_scaling_sample_refuses_bad_input_in_one_line(capsys, run_dir, tmp_path):
    no_checkpoint = tmp_path / "copy"
    no_checkpoint.mkdir()
    (no_checkpoint / "summary.json").write_text((run_dir / "summary.json").read_text())
    for argv, message in [
        ([str(run_dir), "--prompt", "x", "--n", "0"], "n=0: expected at least 1"),
        ([str(run_dir), "--prompt", "x" * 40], "a prompt of 41 tokens is longer than n_ctx=32"),
        ([str(run_dir), "--prompt", "x" * 20, "--max-new-tokens", "20"],
         "max_new_tokens=20 after a prompt of 21 tokens exceeds n_ctx=32: at most 11"),
        ([str(no_checkpoint), "--prompt", "x"], f"{no_checkpoint} has no checkpoint"),
        ([str(tmp_path / "nowhere"), "--prompt", "x"], "nowhere is not a directory"),
        ([str(run_dir), "--prompt", "x", "--step", "7"], "--step=7 is step 7, which"),
        ([str(run_dir)], "--prompt"),
    ]:
        status, out, err = _sample(capsys, *argv)
        assert status == 2, (argv, err)
        assert err.startswith("scaling-sample: error: ") and message in err, err
        assert err.count("\n") == 1 and not out
