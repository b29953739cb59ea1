"""GPU-only checks (run with `pytest -m gpu` on a machine with a CUDA jaxlib)."""

import jax
import jax.numpy as jnp
import pytest

from scaling.model import GPT, GPTConfig, init_params, resolve_attention, resolve_dtype

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def needs_gpu():
    if jax.default_backend() != "gpu":
        pytest.skip("no GPU backend")


def test_auto_numerics_on_gpu_are_bf16_with_cudnn_attention():
    dtype = resolve_dtype("auto")
    assert dtype == "bfloat16"
    assert resolve_attention("auto", dtype) == "cudnn"


def test_gpt2_small_runs_in_bf16_with_cudnn_attention_and_matches_xla():
    shape = dict(vocab_size=50257, n_layer=12, d_model=768, n_head=12, n_ctx=1024, d_ff=3072,
                 dtype="bfloat16")
    params = init_params(GPTConfig(**shape), seed=0)
    ids = jax.random.randint(jax.random.PRNGKey(0), (2, 1024), 0, 50257)
    cudnn = GPT(GPTConfig(**shape, attention="cudnn")).apply({"params": params}, ids)
    xla = GPT(GPTConfig(**shape, attention="xla")).apply({"params": params}, ids)
    assert cudnn.dtype == jnp.bfloat16
    hlo = jax.jit(GPT(GPTConfig(**shape, attention="cudnn")).apply).lower(
        {"params": params}, ids).as_text()
    assert "cudnn" in hlo.lower() or "custom_call" in hlo
    assert jnp.max(jnp.abs(cudnn.astype(jnp.float32) - xla.astype(jnp.float32))) < 0.1
