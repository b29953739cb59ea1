"""Parameter and FLOP accounting: what N and C mean in every table this project writes.

Counting conventions (../shared/reference/SCALING_FACTS.md):
- N (Kaplan's non-embedding parameters) = every parameter except the token and position
  embeddings; its weight matrices alone are 2·d·L·(2·d_attn + d_ff) = 12·L·d² at d_ff = 4d.
- Model FLOPs per token = 6 × (weight-matmul parameters, unembedding included, embedding
  lookup excluded) + 6·L·n_ctx·d_attn for causal attention (each query-key pair once, forward
  and backward), as MaxText and Megatron count. Biases and LayerNorms are not counted.
- MFU = achieved model FLOP/s ÷ the device's dense bf16 peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from scaling.model import GPTConfig

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


def block_matmul_params(cfg: GPTConfig) -> int:
    """Weight-matrix parameters of all blocks: L·(4·d² + 2·d·d_ff) = 12·L·d² when d_ff = 4d."""
    d = cfg.d_model
    return cfg.n_layer * (4 * d * d + 2 * d * cfg.d_ff)


def flops_per_token(cfg: GPTConfig) -> int:
    """Training FLOPs per token (forward + backward) by the rule in the module docstring."""
    matmul_params = block_matmul_params(cfg) + cfg.vocab_padded * cfg.d_model
    attention = 6 * cfg.n_layer * cfg.n_ctx * cfg.d_model
    return 6 * matmul_params + attention


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
