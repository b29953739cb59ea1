import jax

from scaling.flops import block_matmul_params, count_params, flops_per_token, mfu
from scaling.model import GPTConfig, init_params

GPT2_SMALL = GPTConfig(vocab_size=50257, n_layer=12, d_model=768, n_head=12, n_ctx=1024,
                       d_ff=3072)


def shapes(cfg: GPTConfig):
    return jax.eval_shape(lambda: init_params(cfg, seed=0))


def test_gpt2_small_counts_match_the_published_124m():
    counts = count_params(shapes(GPT2_SMALL))
    # Hugging Face GPT-2 has 124,439,808 parameters at vocab 50257; padding adds 47 rows.
    assert counts.total == 124_439_808 + 47 * 768 == 124_475_904
    assert counts.embedding == 50304 * 768 + 1024 * 768 == 39_419_904
    assert counts.nonembedding == 12 * (12 * 768**2 + 13 * 768) + 2 * 768 == 85_056_000


def test_kaplan_n_is_12_layers_d_squared_of_weight_matrices():
    for n_layer, d in [(2, 64), (4, 128), (12, 768)]:
        cfg = GPTConfig(vocab_size=4096, n_layer=n_layer, d_model=d, n_head=2, n_ctx=64,
                        d_ff=4 * d)
        assert block_matmul_params(cfg) == 12 * n_layer * d * d
        counts = count_params(shapes(cfg))
        biases_and_norms = n_layer * 13 * d + 2 * d
        assert counts.nonembedding - biases_and_norms == 12 * n_layer * d * d


def test_nonstandard_mlp_width_enters_n():
    cfg = GPTConfig(vocab_size=256, n_layer=3, d_model=32, n_head=2, n_ctx=8, d_ff=48)
    assert block_matmul_params(cfg) == 3 * (4 * 32 * 32 + 2 * 32 * 48)


def test_flops_per_token_golden_values():
    # 6 x (12*12*768^2 block matrices + 50304*768 unembedding) + 6*12*1024*768 attention
    assert flops_per_token(GPT2_SMALL) == 6 * (84_934_656 + 38_633_472) + 56_623_104
    assert flops_per_token(GPT2_SMALL) == 798_031_872
    tiny = GPTConfig(vocab_size=4096, n_layer=2, d_model=64, n_head=2, n_ctx=64, d_ff=256)
    assert flops_per_token(tiny) == 6 * (2 * 12 * 64**2 + 4096 * 64) + 6 * 2 * 64 * 64


def test_mfu_is_none_without_a_known_peak():
    assert mfu(1e6, 1000, jax.devices("cpu")) is None
