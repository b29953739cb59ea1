import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.model import GPT, GPTConfig, cross_entropy, init_params, padded_vocab


def tiny(**overrides) -> GPTConfig:
    shape = dict(vocab_size=300, n_layer=2, d_model=32, n_head=4, n_ctx=16, d_ff=128)
    return GPTConfig(**{**shape, **overrides})


def test_vocab_is_padded_to_a_multiple_of_64():
    assert [padded_vocab(v) for v in (256, 257, 4096, 50257)] == [256, 320, 4096, 50304]


def test_logits_shape_and_parameter_names_follow_gpt2():
    cfg = tiny()
    params = init_params(cfg, seed=0)
    assert set(params) == {"wte", "wpe", "h_0", "h_1", "ln_f"}
    assert set(params["h_0"]) == {"ln_1", "attn", "ln_2", "mlp"}
    assert params["h_0"]["attn"]["c_attn"]["kernel"].shape == (32, 96)  # [in, out] like Conv1D
    assert params["h_0"]["mlp"]["c_fc"]["kernel"].shape == (32, 128)
    assert params["wte"]["embedding"].shape == (320, 32)
    ids = jnp.zeros((3, 16), jnp.int32)
    assert GPT(cfg).apply({"params": params}, ids).shape == (3, 16, 320)


def test_same_seed_same_params_other_seed_other_params():
    a, b, c = (init_params(tiny(), seed=s) for s in (0, 0, 1))
    same = jax.tree_util.tree_map(lambda x, y: bool(jnp.all(x == y)), a, b)
    assert all(jax.tree_util.tree_leaves(same))
    assert not jnp.allclose(a["wte"]["embedding"], c["wte"]["embedding"])


def test_initial_loss_is_near_uniform_over_the_padded_vocabulary():
    cfg = tiny()
    params = init_params(cfg, seed=0)
    ids = jax.random.randint(jax.random.PRNGKey(1), (4, 17), 0, cfg.vocab_size)
    loss = cross_entropy(GPT(cfg).apply({"params": params}, ids[:, :-1]), ids[:, 1:])
    assert abs(float(loss) - np.log(cfg.vocab_padded)) < 0.1


def test_cross_entropy_matches_a_direct_log_softmax():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7)) * 3
    targets = jnp.array([[0, 1, 2, 3, 4], [6, 5, 4, 3, 2]])
    expected = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))
    assert jnp.allclose(cross_entropy(logits, targets), expected, atol=1e-6)


@pytest.mark.parametrize("t", [0, 5, 15])
def test_causality_no_gradient_from_later_positions(t):
    """The output at position t must not depend on the input at any later position."""
    cfg = tiny()
    params = init_params(cfg, seed=0)
    ids = jax.random.randint(jax.random.PRNGKey(2), (1, cfg.n_ctx), 0, cfg.vocab_size)

    def output_at_t(position_table):
        p = {**params, "wpe": {"embedding": position_table}}
        return jnp.sum(GPT(cfg).apply({"params": p}, ids)[0, t] ** 2)

    # Row s of the position table enters the network only at position s.
    grad = jax.grad(output_at_t)(params["wpe"]["embedding"])
    per_position = jnp.abs(grad).sum(axis=-1)
    assert jnp.all(per_position[t + 1:] == 0)
    assert jnp.all(per_position[: t + 1] > 0)


def test_bfloat16_compute_keeps_float32_params():
    cfg = tiny(dtype="bfloat16")
    params = init_params(cfg, seed=0)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    logits = GPT(cfg).apply({"params": params}, jnp.zeros((1, 16), jnp.int32))
    assert logits.dtype == jnp.bfloat16
