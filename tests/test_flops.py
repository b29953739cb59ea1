from dataclasses import replace

import jax
import pytest

from scaling.flops import (
    attention_flops_per_token,
    block_matmul_params,
    count_fields,
    count_params,
    flops_per_token,
    mfu,
    record_counts,
    shape_counts,
)
from scaling.model import GPTConfig, init_params
from tests.runs import pretrain

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


SMALL = GPTConfig(vocab_size=4000, n_layer=2, d_model=64, n_head=2, n_ctx=32, d_ff=256)
# By hand: vocab padded to 4032; block matrices 2·(4·64² + 2·64·256) = 98,304; unembedding
# 4032·64 = 258,048; causal attention 6·2·32·64 = 24,576 FLOPs per token.
BLOCKS, UNEMBED, ATTENTION = 98_304, 258_048, 24_576


def test_counts_add_up_and_match_the_tree():
    counts = shape_counts(SMALL)
    assert counts.embedding_token == counts.unembedding == 4032 * 64
    assert counts.embedding_position == 32 * 64
    assert counts.tied and counts.total == counts.nonembedding + counts.embedding
    untied = replace(counts, tied=False)
    assert untied.total == counts.nonembedding + counts.embedding + counts.unembedding
    tree = count_params(shapes(SMALL))
    assert (tree.total, tree.embedding, tree.nonembedding) == (
        counts.total, counts.embedding, counts.nonembedding)
    assert counts.nonembedding == BLOCKS + 2 * (3 * 64 + 64 + 256 + 64 + 4 * 64) + 2 * 64


def test_flops_with_and_without_attention_and_unembedding_by_hand():
    assert attention_flops_per_token(SMALL) == ATTENTION
    assert flops_per_token(SMALL) == 6 * (BLOCKS + UNEMBED) + ATTENTION == 2_162_688
    assert flops_per_token(SMALL, attention=False) == 6 * (BLOCKS + UNEMBED)
    assert flops_per_token(SMALL, unembed=False) == 6 * BLOCKS + ATTENTION
    assert flops_per_token(SMALL, unembed=False, attention=False) == 6 * BLOCKS == 589_824


def test_record_fields_carry_every_count_apart():
    fields = count_fields(SMALL)
    counts = shape_counts(SMALL)
    assert fields["n_params"] == fields["n_params_nonembed"] + fields["n_params_embed"]
    assert fields["n_params_embed"] == (fields["n_params_embed_token"]
                                        + fields["n_params_embed_position"])
    assert fields["n_params_unembed"] == UNEMBED and fields["unembed_tied"] is True
    assert fields["n_params"] == counts.total
    assert (fields["flops_per_token"], fields["flops_per_token_no_attn"],
            fields["flops_per_token_no_unembed"],
            fields["flops_per_token_no_unembed_no_attn"]) == (
        6 * (BLOCKS + UNEMBED) + ATTENTION, 6 * (BLOCKS + UNEMBED), 6 * BLOCKS + ATTENTION,
        6 * BLOCKS)


def test_a_run_that_reads_no_unembedding_records_its_own_flops():
    """A reward model's step: its flops_per_token lacks the unembedding, and so do the
    variants taken from it."""
    own = flops_per_token(SMALL, unembed=False)
    fields = count_fields(SMALL, own)
    assert fields["flops_per_token"] == fields["flops_per_token_no_unembed"] == own
    assert fields["flops_per_token_no_attn"] == fields["flops_per_token_no_unembed_no_attn"]


def test_counts_from_a_recorded_config_and_what_it_must_name():
    model = {"n_layer": 2, "d_model": 64, "n_head": 2, "n_ctx": 32, "d_ff": 256}
    assert record_counts(model, 4000) == count_fields(SMALL)
    assert record_counts(model | {"d_ff": None}, 4000)["n_params_nonembed"] == (
        shape_counts(replace(SMALL, d_ff=256)).nonembedding)  # d_ff None: 4·d_model
    with pytest.raises(KeyError, match="n_ctx"):
        record_counts({"n_layer": 2, "d_model": 64}, 4000)


def test_a_runs_record_carries_the_counts_of_its_own_tree(tiny_config, tmp_path):
    summary = pretrain(tiny_config(tokens=2_000), tmp_path)
    shape = summary["config"]["model"]
    expected = record_counts(shape, summary["vocab_size"])
    assert {k: summary[k] for k in expected} == expected
    assert summary["n_params"] == summary["n_params_nonembed"] + summary["n_params_embed"]
    assert summary["n_params_unembed"] == summary["vocab_size_padded"] * shape["d_model"]
