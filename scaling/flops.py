"""Parameter and FLOP accounting: what N and C mean in every table this project writes.

Counting conventions (../shared/reference/SCALING_FACTS.md):
- N (Kaplan's non-embedding parameters) = every parameter except the token and position
  embeddings; its weight matrices alone are 2·d·L·(2·d_attn + d_ff) = 12·L·d² at d_ff = 4d.
- The unembedding (logits = x·Wᵀ) is the token embedding itself (tied, as GPT-2): its
  vocab_padded·d parameters are counted once, in the embedding, and again on their own as
  `n_params_unembed` for the conventions that count the output layer (Porian's `standard`).
- Model FLOPs per token = 6 × (weight-matmul parameters, unembedding included, embedding
  lookup excluded) + 6·L·n_ctx·d_attn for causal attention (each query-key pair once, forward
  and backward), as MaxText and Megatron count. Biases and LayerNorms are not counted.
  Bidirectional attention (a masked LM, `causal=False`) reads every pair both ways, with no
  causal halving: 12·L·n_ctx·d_attn. A masked LM's unembedding is counted at every position,
  as `masked_token_loss` computes it (the loss reads the chosen ones).
  Without the unembedding and the attention term it is 6·(block weight matrices), Kaplan's
  C ≈ 6N per token; every record carries the four variants (`flop_fields`).
- MFU = achieved model FLOP/s ÷ the device's dense bf16 peak.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import jax

from scaling.model import GPTConfig, model_shape

EMBEDDING_PARAMS = ("wte", "wpe")

# Dense bf16 peak FLOP/s per device, by the start of `jax.Device.device_kind`.
PEAK_BF16_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v4": 275e12,
}


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int  # token + position embeddings (the token table is also the unembedding)
    nonembedding: int  # Kaplan's N, exact: matrices, biases and LayerNorms of the blocks and ln_f


def count_params(params: dict) -> ParamCounts:
    """Exact counts from a parameter tree (top-level keys as in `scaling.model.GPT`)."""
    sizes = {name: sum(x.size for x in jax.tree_util.tree_leaves(sub)) for name, sub in
             params.items()}
    embedding = sum(sizes.get(name, 0) for name in EMBEDDING_PARAMS)
    total = sum(sizes.values())
    return ParamCounts(total=int(total), embedding=int(embedding),
                       nonembedding=int(total - embedding))


@dataclass(frozen=True)
class ShapeCounts:
    """The parameters of a language model of one shape, by part (`shape_counts`)."""

    nonembedding: int  # the blocks (matrices, biases, LayerNorms) and ln_f
    embedding_token: int  # wte: vocab_padded·d
    embedding_position: int  # wpe: n_ctx·d
    unembedding: int  # the output layer's vocab_padded·d, whether tied or not
    tied: bool  # the unembedding is wte: its parameters are not added to the total again

    @property
    def embedding(self) -> int:
        return self.embedding_token + self.embedding_position

    @property
    def total(self) -> int:
        return self.nonembedding + self.embedding + (0 if self.tied else self.unembedding)


def shape_counts(cfg: GPTConfig) -> ShapeCounts:
    """Exact parameter counts of the language model `cfg` describes, without building it
    (`count_params` of its tree gives the same total, embedding and non-embedding)."""
    d, f = cfg.d_model, cfg.d_ff
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    return ShapeCounts(
        nonembedding=cfg.n_layer * block + 2 * d,
        embedding_token=cfg.vocab_padded * d,
        embedding_position=cfg.n_ctx * d,
        unembedding=cfg.vocab_padded * d,
        tied=True,
    )


def block_matmul_params(cfg: GPTConfig) -> int:
    """Weight-matrix parameters of all blocks: L·(4·d² + 2·d·d_ff) = 12·L·d² when d_ff = 4d."""
    d = cfg.d_model
    return cfg.n_layer * (4 * d * d + 2 * d * cfg.d_ff)


def attention_flops_per_token(cfg: GPTConfig) -> int:
    """Attention's training FLOPs per token: QKᵀ and AV at 2·n_ctx·d each, ×3 for forward and
    backward, in every layer: 12·L·n_ctx·d for bidirectional attention, halved for a causal
    model (each query-key pair once): 6·L·n_ctx·d."""
    full = 12 * cfg.n_layer * cfg.n_ctx * cfg.d_model
    return full // 2 if cfg.causal else full


def flops_per_token(cfg: GPTConfig, unembed: bool = True, attention: bool = True) -> int:
    """Training FLOPs per token (forward + backward) by the rule in the module docstring.
    `unembed=False`: a reward model's, which reads its scalar head at one position of a window
    instead of the unembedding at every one (the head's d_model FLOPs per window not counted);
    with `attention=False` too, Kaplan's 6·N (block weight matrices only)."""
    matmul_params = block_matmul_params(cfg) + (cfg.vocab_padded * cfg.d_model if unembed else 0)
    return 6 * matmul_params + (attention_flops_per_token(cfg) if attention else 0)


def count_fields(cfg: GPTConfig, recorded: int | None = None) -> dict[str, int | bool]:
    """A run record's parameter and FLOP counts for a model of shape `cfg`, every part apart,
    so an analysis can count N and C by any convention (`analysis.counting`).

    `recorded` is the run's own FLOPs per token (default: the language model's,
    `flops_per_token(cfg)`; a reward model's reads no unembedding); the variant without the
    attention term is taken from it, those without the unembedding from the shape.
    """
    counts = shape_counts(cfg)
    recorded = flops_per_token(cfg) if recorded is None else recorded
    return {
        "n_params": counts.total,
        "n_params_nonembed": counts.nonembedding,
        "n_params_embed": counts.embedding,
        "n_params_embed_token": counts.embedding_token,
        "n_params_embed_position": counts.embedding_position,
        "n_params_unembed": counts.unembedding,
        "unembed_tied": counts.tied,
        "flops_per_token": recorded,
        "flops_per_token_no_attn": recorded - attention_flops_per_token(cfg),
        "flops_per_token_no_unembed": flops_per_token(cfg, unembed=False),
        "flops_per_token_no_unembed_no_attn": flops_per_token(cfg, unembed=False,
                                                              attention=False),
    }


def record_counts(model: Mapping[str, Any], vocab_size: int,
                  recorded: int | None = None) -> dict[str, int | bool]:
    """`count_fields` of the model a run record's `config["model"]` and `vocab_size` describe
    (`model_shape` builds it); KeyError naming the shape's fields the config lacks."""
    missing = [name for name in ("n_layer", "d_model", "n_ctx") if name not in model]
    if missing:
        raise KeyError(f"the model config lacks {', '.join(missing)}")
    # fields that do not change a count, for configs recorded before they existed
    fields = {"d_ff": None, "dtype": "float32", "attention": "xla", "remat": "none",
              "scan_layers": False, "loss_chunk": 0, "n_head": 1, "causal": True} | dict(model)
    return count_fields(model_shape(SimpleNamespace(**fields), int(vocab_size)), recorded)


def peak_flops(device: jax.Device) -> float | None:
    """The device's dense bf16 peak, or None where we have no number (CPUs)."""
    for prefix, peak in PEAK_BF16_FLOPS.items():
        if device.device_kind.startswith(prefix):
            return peak
    return None


MFU_FORMULA = "mfu = tokens_per_s * flops_per_token / (n_devices * peak_bf16_flops)"


def mfu(tokens_per_s: float, flops_per_token: int, devices: list[jax.Device]) -> float | None:
    """Model FLOPs utilisation (see MFU_FORMULA); None on devices without a known peak."""
    peak = peak_flops(devices[0])
    if peak is None:
        return None
    return tokens_per_s * flops_per_token / (len(devices) * peak)
