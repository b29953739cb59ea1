"""GPT-2 decoder-only Transformer in Flax, laid out like Hugging Face's GPT-2.

Module names (`wte`, `wpe`, `h_{i}/ln_1`, `attn/c_attn`, `attn/c_proj`, `ln_2`, `mlp/c_fc`,
`mlp/c_proj`, `ln_f`) and kernel layouts ([in, out], as GPT-2's Conv1D) match the Hugging Face
checkpoint, so weights export by renaming. Parameters are always float32; `dtype` is the compute
dtype. The output embedding is the input embedding (tied), over a vocabulary padded to a
multiple of 64 for the matmul units.

With `scan_layers` the blocks are one `nn.scan` (one compiled block, whatever the depth) and
their parameters are stacked under `h` with a leading layer axis; `remat` recomputes each
block's activations in the backward pass instead of storing them.

Decoding (`init_cache`, `extend`) runs the same modules on a few new tokens at a time, with the
keys and values of the tokens read before kept in a `KVCache`; training never passes a cache.

A reward model is this Transformer plus `reward_head`, a separate parameter subtree read by
`rewards` from the final LayerNorm's output (the language model's forward pass is untouched);
a PPO policy adds `value_head` the same way (`logits_and_values`).
DPO (`dpo_loss`) trains the language model itself on the same comparisons, against the log-probs
of a frozen reference carried in its batches.

With `causal=False` (stage=mlm) every position attends to every other, both kernels without
their causal mask, and `masked_token_loss` trains BERT's objective: the original tokens at the
corrupted positions, read from both sides (Devlin et al. 2019). Decoding needs a causal model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from scaling.batch import ComparisonBatch, LmBatch, MaskedBatch, PreferenceBatch
from scaling.config import ConfigError

VOCAB_MULTIPLE = 64
LN_EPS = 1e-5
INIT_STD = 0.02
REWARD_HEAD = "reward_head"  # the parameter subtree a reward model adds
VALUE_HEAD = "value_head"  # the one a PPO policy adds (stage=rl), shaped like REWARD_HEAD

# What a rematerialised block keeps from its forward pass (`model.remat`).
REMAT_POLICIES = {
    "full": None,  # nothing: the backward pass recomputes the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # the weight matmuls
}


def padded_vocab(vocab_size: int) -> int:
    """The embedding rows actually allocated: vocab rounded up to a multiple of 64."""
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


@dataclass(frozen=True)
class GPTConfig:
    """Plain shape and numerics of one model; built from the run config by `model_shape`."""

    vocab_size: int
    n_layer: int
    d_model: int
    n_head: int
    n_ctx: int
    d_ff: int
    dtype: str = "float32"
    attention: str = "xla"
    remat: str = "none"
    scan_layers: bool = False
    loss_chunk: int = 0  # tokens per chunk of the fused unembedding + loss; 0: all logits at once
    causal: bool = True  # False: bidirectional attention (a masked LM, stage=mlm)

    @property
    def vocab_padded(self) -> int:
        return padded_vocab(self.vocab_size)


def model_shape(model: Any, vocab_size: int) -> GPTConfig:
    """The one place a model's shape is built from a run's `model` config (a ModelConfig or any
    object with its fields, a Hydra node included) and the tokenizer's vocabulary: by the run,
    and by the sweep resolvers that plan FLOPs before it. `dtype` and `attention` stay as
    configured (`auto` too); the run resolves them for its machine. A config without `causal`
    (one recorded before it existed) is a causal model."""
    d_ff = model.d_ff if model.d_ff is not None else 4 * model.d_model
    return GPTConfig(
        vocab_size=vocab_size, n_layer=model.n_layer, d_model=model.d_model,
        n_head=model.n_head, n_ctx=model.n_ctx, d_ff=d_ff, dtype=model.dtype,
        attention=model.attention, remat=model.remat, scan_layers=model.scan_layers,
        loss_chunk=model.loss_chunk, causal=getattr(model, "causal", True),
    )


def resolve_dtype(name: str, backend: str | None = None) -> str:
    """`auto` means bfloat16 on accelerators and float32 on CPU."""
    if name != "auto":
        return name
    backend = backend or jax.default_backend()
    return "float32" if backend == "cpu" else "bfloat16"


def resolve_attention(name: str, dtype: str, backend: str | None = None) -> str:
    """`auto` picks the cuDNN flash kernel where it applies (GPU, bf16), XLA elsewhere.
    Raises ConfigError for `cudnn` where it does not apply (JAX would stop the run with a
    RuntimeError at its first step)."""
    backend = backend or jax.default_backend()
    applies = backend == "gpu" and dtype == "bfloat16"
    if name == "cudnn" and not applies:
        raise ConfigError(f"model.attention=cudnn is invalid here: expected an NVIDIA GPU and "
                          f"bfloat16 for cuDNN's kernel, this run has {backend} and {dtype} "
                          "(model.attention=auto picks it where it applies)")
    if name != "auto":
        return name
    return "cudnn" if applies else "xla"


def _dense(features: int, dtype, std: float, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.normal(std),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, name=name)


@struct.dataclass
class KVCache:
    """What decoding keeps of the tokens read so far: each layer's keys and values in slots
    [0, length) of S, and which slots hold a token (a prompt's padding does not). A token's
    position (`wpe`) is the number of valid slots before it, so padding anywhere is skipped.

    One array per layer, not one stacked [L, ...] array: in a decoding loop XLA updates each
    layer's buffer in place, where slicing and restacking a stacked cache copies all of it
    every step (10x slower on a CPU)."""

    k_BxHxSxK: tuple[jax.Array, ...]  # one per layer, compute dtype
    v_BxHxSxK: tuple[jax.Array, ...]
    valid_BxS: jax.Array  # bool
    length: jax.Array  # int32 scalar: slots written

    def repeat(self, n: int) -> KVCache:
        """Each sequence n times in a row (row b -> rows b*n .. b*n+n-1): n continuations of
        one prompt read once."""
        return jax.tree_util.tree_map(lambda a: jnp.repeat(a, n, axis=0) if a.ndim else a, self)


@struct.dataclass
class _Slots:
    """Where T new tokens go in a KVCache: from slot `start`; which slots each one sees."""

    start: jax.Array  # int32 scalar
    mask_Bx1xTxS: jax.Array  # bool: valid, and not after the token's own slot


def _attend_cached(q_BxHxTxK: jax.Array, k_BxHxSxK: jax.Array, v_BxHxSxK: jax.Array,
                   mask_Bx1xTxS: jax.Array) -> jax.Array:
    """Masked attention of T new tokens over a layer's cache, computed as XLA's
    `jax.nn.dot_product_attention` does (scores and softmax in float32, masked scores at a
    finite minimum) but on keys and values laid out [B, H, S, K]: batch dimensions first, as
    XLA's dot wants them, so that no step transposes the whole cache (the [B, S, H, K] layout
    cost a decoding step most of its time on a CPU)."""
    scores_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK,
                                preferred_element_type=jnp.float32)
    scores_BxHxTxS *= 1 / math.sqrt(q_BxHxTxK.shape[-1])
    scores_BxHxTxS = jnp.where(mask_Bx1xTxS, scores_BxHxTxS, jnp.finfo(jnp.float32).min)
    probs_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(v_BxHxSxK.dtype)
    return jnp.einsum("bhts,bhsk->bthk", probs_BxHxTxS, v_BxHxSxK)


class Attention(nn.Module):
    """Multi-head self-attention, causal unless `cfg.causal` is False; with `kv` (a layer's
    cached keys and values, [B, H, S, K] each) it writes the new tokens' keys and values at
    `slots.start` and attends over the cache instead, returning the updated `kv` (None
    without one)."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, kv: tuple[jax.Array, jax.Array] | None = None,
                 slots: _Slots | None = None) -> tuple[jax.Array, Any]:
        cfg = self.cfg
        B, T, D = x_BxTxD.shape
        H = cfg.n_head
        residual_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        qkv_BxTx3D = _dense(3 * D, cfg.dtype, INIT_STD, "c_attn")(x_BxTxD)
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (
            t.reshape(B, T, H, D // H) for t in jnp.split(qkv_BxTx3D, 3, axis=-1)
        )
        if kv is None:
            y_BxTxHxK = jax.nn.dot_product_attention(
                q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=cfg.causal,
                implementation=cfg.attention
            )
        else:
            k_BxHxSxK, v_BxHxSxK = (
                jax.lax.dynamic_update_slice_in_dim(
                    cached, new.transpose(0, 2, 1, 3).astype(cached.dtype), slots.start, axis=2)
                for cached, new in zip(kv, (k_BxTxHxK, v_BxTxHxK), strict=True))
            y_BxTxHxK = _attend_cached(q_BxTxHxK.transpose(0, 2, 1, 3), k_BxHxSxK, v_BxHxSxK,
                                       slots.mask_Bx1xTxS)
            kv = (k_BxHxSxK, v_BxHxSxK)
        return _dense(D, cfg.dtype, residual_std, "c_proj")(y_BxTxHxK.reshape(B, T, D)), kv


class MLP(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        residual_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        h_BxTxF = _dense(cfg.d_ff, cfg.dtype, INIT_STD, "c_fc")(x_BxTxD)
        h_BxTxF = jax.nn.gelu(h_BxTxF, approximate=True)
        return _dense(cfg.d_model, cfg.dtype, residual_std, "c_proj")(h_BxTxF)


class Block(nn.Module):
    """A pre-LN block, as (x, None) -> (x, None) so that `nn.scan` can carry x through layers;
    when decoding, (x, kv, slots) -> (x, kv), kv the layer's cached keys and values."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, kv: tuple[jax.Array, jax.Array] | None = None,
                 slots: _Slots | None = None) -> tuple[jax.Array, Any]:
        dtype = self.cfg.dtype
        y_BxTxD, kv = Attention(self.cfg, name="attn")(_layer_norm(dtype, "ln_1")(x_BxTxD), kv,
                                                       slots)
        x_BxTxD = x_BxTxD + y_BxTxD
        return x_BxTxD + MLP(self.cfg, name="mlp")(_layer_norm(dtype, "ln_2")(x_BxTxD)), kv


def _block_class(cfg: GPTConfig) -> type[nn.Module]:
    """Block, wrapped for `remat` and `scan_layers` as configured."""
    block = Block
    if cfg.remat != "none":
        # Inside a scan, XLA cannot merge the recomputation with the forward pass anyway.
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        block = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        length=cfg.n_layer)
    return block


class GPT(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab_padded] (in the compute dtype); with
    `unembed=False`, the final LayerNorm's output [B, T, d_model] instead. With a `cache`
    (decoding: see `extend`; layers unscanned), (that output, the cache with these T tokens
    added)."""

    cfg: GPTConfig

    @nn.compact
    def __call__(self, ids_BxT: jax.Array, unembed: bool = True, cache: KVCache | None = None,
                 valid_BxT: jax.Array | None = None) -> Any:
        cfg = self.cfg
        wte = nn.Embed(
            cfg.vocab_padded, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(INIT_STD), name="wte",
        )
        wpe = nn.Embed(
            cfg.n_ctx, cfg.d_model, dtype=cfg.dtype, param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(INIT_STD), name="wpe",
        )
        T = ids_BxT.shape[1]
        if cache is None:
            x_BxTxD = wte(ids_BxT) + wpe(jnp.arange(T))[None]
        else:
            if cfg.scan_layers:
                raise ValueError("decoding runs the layers unscanned: see `unscanned`")
            positions_BxT, slots, cache = _read_into(cache, valid_BxT, cfg.n_ctx)
            x_BxTxD = wte(ids_BxT) + wpe(positions_BxT)
        block = _block_class(cfg)
        if cfg.scan_layers:
            x_BxTxD, _ = block(cfg, name="h")(x_BxTxD, None)
        elif cache is None:
            for i in range(cfg.n_layer):
                x_BxTxD, _ = block(cfg, name=f"h_{i}")(x_BxTxD, None)
        else:
            layers = [None] * cfg.n_layer
            for i in range(cfg.n_layer):
                x_BxTxD, layers[i] = block(cfg, name=f"h_{i}")(
                    x_BxTxD, (cache.k_BxHxSxK[i], cache.v_BxHxSxK[i]), slots)
            k, v = zip(*layers, strict=True)
            cache = cache.replace(k_BxHxSxK=k, v_BxHxSxK=v)
        x_BxTxD = _layer_norm(cfg.dtype, "ln_f")(x_BxTxD)
        out = wte.attend(x_BxTxD) if unembed else x_BxTxD
        return out if cache is None else (out, cache)


def _read_into(cache: KVCache, valid_BxT: jax.Array,
               n_ctx: int) -> tuple[jax.Array, _Slots, KVCache]:
    """T new tokens' positions, the slots they take and see, and the cache counting them."""
    T = valid_BxT.shape[1]
    S = cache.valid_BxS.shape[1]
    seen_B = jnp.sum(cache.valid_BxS, axis=1, dtype=jnp.int32)
    # a padding token gets the next token's position: any in-range row of wpe will do
    positions_BxT = seen_B[:, None] + jnp.cumsum(valid_BxT, axis=1, dtype=jnp.int32) - valid_BxT
    valid_BxS = jax.lax.dynamic_update_slice_in_dim(cache.valid_BxS, valid_BxT, cache.length,
                                                    axis=1)
    slot_of_T = cache.length + jnp.arange(T)
    mask_BxTxS = valid_BxS[:, None, :] & (jnp.arange(S)[None, None, :] <= slot_of_T[None, :, None])
    slots = _Slots(start=cache.length, mask_Bx1xTxS=mask_BxTxS[:, None])
    cache = cache.replace(valid_BxS=valid_BxS, length=cache.length + T)
    return jnp.minimum(positions_BxT, n_ctx - 1), slots, cache


def init_cache(cfg: GPTConfig, batch: int, slots: int) -> KVCache:
    """An empty cache for `batch` sequences of up to `slots` tokens (padding included), keys
    and values in the compute dtype: 2 * n_layer * batch * slots * d_model numbers."""
    shape = (batch, cfg.n_head, slots, cfg.d_model // cfg.n_head)
    zeros = tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.n_layer))
    return KVCache(k_BxHxSxK=zeros, v_BxHxSxK=zeros, valid_BxS=jnp.zeros((batch, slots), bool),
                   length=jnp.zeros((), jnp.int32))


def unscanned(cfg: GPTConfig, params: dict) -> tuple[GPTConfig, dict]:
    """The same model with scan_layers off: its blocks' parameters, stacked under `h`, as
    `h_0` .. `h_{L-1}`. Decoding unrolls the layers (each keeps its own cache buffer); a
    decoding loop calls this once, outside the loop."""
    if not cfg.scan_layers:
        return cfg, params
    layers = {f"h_{i}": jax.tree_util.tree_map(lambda p, i=i: p[i], params["h"])
              for i in range(cfg.n_layer)}
    return replace(cfg, scan_layers=False), {**{k: v for k, v in params.items() if k != "h"},
                                             **layers}


def extend(cfg: GPTConfig, params: dict, cache: KVCache, ids_BxT: jax.Array,
           valid_BxT: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Read T more tokens of each sequence into the cache's next T slots: their logits
    [B, T, vocab_padded], as the full forward pass gives them at the same positions, and the
    cache holding them. `valid_BxT` (bool, default all True) marks padding, which takes a slot
    but no position and is never attended to; its logits mean nothing. The cache must have T
    free slots (writes past its end are clamped by XLA onto the last slots); a token's position
    must stay below n_ctx (later ones reuse the last position's embedding).
    """
    if not cfg.causal:
        raise ValueError("decoding reads tokens one after another: a bidirectional (masked LM) "
                         "model cannot generate")
    valid_BxT = jnp.ones(ids_BxT.shape, bool) if valid_BxT is None else valid_BxT.astype(bool)
    cfg, params = unscanned(cfg, params)
    return GPT(cfg).apply({"params": params}, ids_BxT, cache=cache, valid_BxT=valid_BxT)


def init_params(cfg: GPTConfig, seed: int) -> dict:
    """Float32 parameters for `cfg`, a pure function of the seed."""
    ids = jnp.zeros((1, cfg.n_ctx), jnp.int32)
    return jax.jit(GPT(cfg).init)(jax.random.PRNGKey(seed), ids)["params"]


def token_losses(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Next-token loss in nats at every position, softmax in float32 whatever the compute dtype."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return log_z_BxT - target_logit_BxT


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                  weights_BxT: jax.Array | None = None) -> jax.Array:
    """Next-token loss in nats: the mean over targets, or sum(w·loss)/sum(w) with weights
    (nanodo's `weights_BxL`; 0 leaves a target out, as a prompt token in SFT), 0 where no
    target counts."""
    losses_BxT = token_losses(logits_BxTxV, targets_BxT)
    if weights_BxT is None:
        return jnp.mean(losses_BxT)
    return weighted_mean(losses_BxT, weights_BxT)


def weighted_mean(x: jax.Array, weights: jax.Array, axis: int | None = None) -> jax.Array:
    """sum(w·x)/sum(w) along `axis`, written as mean(w·x)/mean(w): with equal weights every
    w/mean(w) is exactly 1, so all-ones weights give exactly `jnp.mean(x)`, bit for bit (the
    pretraining losses recorded before batches had weights). 0 where every weight is 0."""
    mean_weight = jnp.mean(weights, axis=axis)
    return jnp.mean(weights * x, axis=axis) / jnp.where(mean_weight > 0, mean_weight, 1.0)


def position_losses(cfg: GPTConfig, params: dict, batch: LmBatch) -> jax.Array:
    """Weighted mean loss at each context position [T], over the batch's sequences: how loss
    falls with context (in-context learning)."""
    logits_BxTxV = GPT(cfg).apply({"params": params}, batch.tokens[:, :-1])
    losses_BxT = token_losses(logits_BxTxV, batch.tokens[:, 1:])
    return weighted_mean(losses_BxT, batch.weights, axis=0)


def chunked_cross_entropy(x_BxTxD: jax.Array, embedding_VxD: jax.Array, targets_BxT: jax.Array,
                          weights_BxT: jax.Array, chunk: int, dtype: str) -> jax.Array:
    """`cross_entropy` (weighted) of the unembedding x @ embedding.T, `chunk` tokens at a time.

    Only one chunk's logits [chunk, V] ever exist. A custom VJP computes each chunk's gradients
    in the same pass as its loss, so the backward pass does not recompute the logits: the same
    FLOPs as the dense path, without writing and re-reading all B*T*V logits.
    """
    V = embedding_VxD.shape[0]
    total_weight = jnp.sum(weights_BxT)
    total_weight = jnp.where(total_weight > 0, total_weight, 1.0)  # no target counts: 0

    def chunks(x_BxTxD, targets_BxT, weights_BxT):
        return (x_BxTxD.reshape(-1, chunk, x_BxTxD.shape[-1]), targets_BxT.reshape(-1, chunk),
                weights_BxT.reshape(-1, chunk))

    def logits_and_loss(x_KxD, w_VxD, t_K, weight_K):
        logits_KxV = jnp.dot(x_KxD.astype(dtype), w_VxD.astype(dtype).T).astype(jnp.float32)
        log_z_K = jax.nn.logsumexp(logits_KxV, axis=-1)
        target_logit_K = jnp.take_along_axis(logits_KxV, t_K[:, None], axis=-1)[:, 0]
        return logits_KxV, log_z_K, jnp.sum(weight_K * (log_z_K - target_logit_K))

    @jax.custom_vjp
    def loss(x_BxTxD, w_VxD, targets_BxT, weights_BxT):
        def add(total, chunk_xtw):
            return total + logits_and_loss(chunk_xtw[0], w_VxD, *chunk_xtw[1:])[2], None

        total, _ = jax.lax.scan(add, jnp.zeros((), jnp.float32),
                                chunks(x_BxTxD, targets_BxT, weights_BxT))
        return total / total_weight

    def loss_and_grads(x_BxTxD, w_VxD, targets_BxT, weights_BxT):
        w_c = w_VxD.astype(dtype)

        def add(carry, chunk_xtw):
            total, grad_w_VxD = carry
            x_KxD, t_K, weight_K = chunk_xtw
            logits_KxV, log_z_K, loss_sum = logits_and_loss(x_KxD, w_VxD, t_K, weight_K)
            # d(loss)/d(logits) = w (softmax - one_hot) / sum(w), in float32 then the compute dtype
            g_KxV = (jnp.exp(logits_KxV - log_z_K[:, None])
                     - jax.nn.one_hot(t_K, V, dtype=jnp.float32)) * weight_K[:, None] / total_weight
            g_KxV = g_KxV.astype(dtype)
            grad_w_VxD += jnp.dot(g_KxV.T, x_KxD.astype(dtype), preferred_element_type=jnp.float32)
            return (total + loss_sum, grad_w_VxD), jnp.dot(g_KxV, w_c)

        init = (jnp.zeros((), jnp.float32), jnp.zeros_like(w_VxD))
        (total, grad_w_VxD), grad_x = jax.lax.scan(
            add, init, chunks(x_BxTxD, targets_BxT, weights_BxT))
        grad_x_BxTxD = grad_x.reshape(x_BxTxD.shape).astype(x_BxTxD.dtype)
        return total / total_weight, (grad_x_BxTxD, grad_w_VxD)

    def backward(grads, g):
        grad_x_BxTxD, grad_w_VxD = grads
        return (g * grad_x_BxTxD).astype(grad_x_BxTxD.dtype), g * grad_w_VxD, None, None

    loss.defvjp(loss_and_grads, backward)
    return loss(x_BxTxD, embedding_VxD, targets_BxT, weights_BxT)


def _token_loss(cfg: GPTConfig, params: dict, inputs_BxT: jax.Array, targets_BxT: jax.Array,
                weights_BxT: jax.Array) -> jax.Array:
    """Weighted mean loss of `targets_BxT` from the model's logits at each input position
    (sum(w·loss)/sum(w)); fused and chunked if cfg.loss_chunk."""
    if not cfg.loss_chunk:
        logits_BxTxV = GPT(cfg).apply({"params": params}, inputs_BxT)
        return cross_entropy(logits_BxTxV, targets_BxT, weights_BxT)
    x_BxTxD = GPT(cfg).apply({"params": params}, inputs_BxT, unembed=False)
    return chunked_cross_entropy(x_BxTxD, params["wte"]["embedding"], targets_BxT, weights_BxT,
                                 cfg.loss_chunk, cfg.dtype)


def next_token_loss(cfg: GPTConfig, params: dict, batch: LmBatch) -> jax.Array:
    """Weighted mean loss of predicting tokens[:, 1:] from tokens[:, :-1] (sum(w·loss)/sum(w));
    fused and chunked if cfg.loss_chunk."""
    return _token_loss(cfg, params, batch.tokens[:, :-1], batch.tokens[:, 1:], batch.weights)


def masked_token_loss(cfg: GPTConfig, params: dict, batch: MaskedBatch) -> jax.Array:
    """BERT's masked-LM loss: the weighted mean loss of the original tokens at the positions
    the corruption chose (weight 1; 0 elsewhere), from the corrupted inputs read by a
    bidirectional model (cfg.causal False; Devlin et al. 2019). The logits are computed at
    every position, as `flops_per_token` counts them."""
    return _token_loss(cfg, params, batch.inputs, batch.targets, batch.weights)


def init_reward_head(cfg: GPTConfig) -> dict:
    """A new reward head: a d_model -> 1 projection at zero, so a reward model starts with every
    reward 0 (the Bradley–Terry loss at ln 2) and its backbone exactly as its parent left it.
    No bias: the loss sees reward differences only, so a bias would never move."""
    return {"kernel": jnp.zeros((cfg.d_model, 1), jnp.float32)}


def rewards(cfg: GPTConfig, params: dict, ids_BxT: jax.Array, last_B: jax.Array) -> jax.Array:
    """The scalar reward of each sequence [B], float32: `params[REWARD_HEAD]` applied to the
    final LayerNorm's output at position last_B, the sequence's last real token. The model is
    causal, so the padding after it is never read; the language-model parameters are the GPT's."""
    backbone = {name: p for name, p in params.items() if name != REWARD_HEAD}
    x_BxTxD = GPT(cfg).apply({"params": backbone}, ids_BxT, unembed=False)
    x_BxD = jnp.take_along_axis(x_BxTxD, last_B[:, None, None], axis=1)[:, 0]
    return jnp.dot(x_BxD.astype(jnp.float32), params[REWARD_HEAD]["kernel"])[:, 0]


def logits_and_values(cfg: GPTConfig, params: dict,
                      ids_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A policy's logits [B, T, vocab_padded] and its value head's estimate [B, T] (float32)
    at every position, from one forward pass: `params[VALUE_HEAD]` on the final LayerNorm's
    output, as `rewards` reads its head (PPO's policy and value share the Transformer)."""
    backbone = {name: p for name, p in params.items() if name not in (VALUE_HEAD, REWARD_HEAD)}
    x_BxTxD = GPT(cfg).apply({"params": backbone}, ids_BxT, unembed=False)
    embedding_VxD = backbone["wte"]["embedding"].astype(cfg.dtype)
    logits_BxTxV = jnp.dot(x_BxTxD.astype(cfg.dtype), embedding_VxD.T)  # wte.attend's product
    values_BxT = jnp.dot(x_BxTxD.astype(jnp.float32), params[VALUE_HEAD]["kernel"])[..., 0]
    return logits_BxTxV, values_BxT


def reward_margins(cfg: GPTConfig, params: dict, batch: ComparisonBatch) -> jax.Array:
    """r_chosen − r_rejected of each comparison [B], both windows read in one forward pass."""
    B = batch.chosen.shape[0]
    r_2B = rewards(cfg, params, jnp.concatenate([batch.chosen, batch.rejected]),
                   jnp.concatenate([batch.chosen_last, batch.rejected_last]))
    return r_2B[:B] - r_2B[B:]


def pairwise_loss(cfg: GPTConfig, params: dict, batch: ComparisonBatch) -> jax.Array:
    """The Bradley–Terry loss −log σ(r_chosen − r_rejected), the weighted mean over the batch's
    comparisons (InstructGPT's reward-model loss; Gao et al. 2022's proxies)."""
    return weighted_mean(-jax.nn.log_sigmoid(reward_margins(cfg, params, batch)), batch.weights)


def pairwise_accuracy(cfg: GPTConfig, params: dict, batch: ComparisonBatch) -> jax.Array:
    """The weighted share of comparisons whose chosen response gets the higher reward; a tie
    counts one half, so a model that cannot tell (the zero head) scores chance, 0.5."""
    margin_B = reward_margins(cfg, params, batch)
    return weighted_mean(jnp.where(margin_B > 0, 1.0, jnp.where(margin_B == 0, 0.5, 0.0)),
                         batch.weights)


def sequence_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                      weights_BxT: jax.Array) -> jax.Array:
    """log p(targets) of each sequence [B]: the weighted sum of its targets' log-probabilities
    (weight 0 leaves a target out: a prompt token or padding), softmax in float32."""
    return -jnp.sum(weights_BxT * token_losses(logits_BxTxV, targets_BxT), axis=-1)


def policy_logprobs(cfg: GPTConfig, params: dict, batch: PreferenceBatch) -> jax.Array:
    """log π(y|x) of each chosen and then each rejected response [2B], summed over response
    tokens, both windows in one forward pass (Rafailov et al. 2023, eq. 7)."""
    ids_2BxT = jnp.concatenate([batch.chosen, batch.rejected])
    weights_2BxT = jnp.concatenate([batch.chosen_weights, batch.rejected_weights])
    logits_2BxTxV = GPT(cfg).apply({"params": params}, ids_2BxT[:, :-1])
    return sequence_logprobs(logits_2BxTxV, ids_2BxT[:, 1:], weights_2BxT)


def log_ratios(cfg: GPTConfig, params: dict, batch: PreferenceBatch) -> jax.Array:
    """log π(y|x) − log π_ref(y|x) of the chosen [0] and the rejected [1] responses, [2, B]."""
    logp_2B = policy_logprobs(cfg, params, batch)
    B = batch.chosen.shape[0]
    return jnp.stack([logp_2B[:B] - batch.ref_chosen, logp_2B[B:] - batch.ref_rejected])


def dpo_margins(cfg: GPTConfig, beta: float, params: dict, batch: PreferenceBatch) -> jax.Array:
    """DPO's implicit reward margin [B]: β·[(log π − log π_ref)(y_c) − (log π − log π_ref)(y_r)]
    (Rafailov et al. 2023, eq. 7); 0 while π is the reference."""
    ratio_2xB = log_ratios(cfg, params, batch)
    return beta * (ratio_2xB[0] - ratio_2xB[1])


def dpo_loss(cfg: GPTConfig, beta: float, params: dict, batch: PreferenceBatch) -> jax.Array:
    """The DPO loss −log σ(margin), the weighted mean over the batch's comparisons (Rafailov et
    al. 2023, eq. 7): ln 2 at the reference. π_ref enters only through the batch's constants."""
    return weighted_mean(-jax.nn.log_sigmoid(dpo_margins(cfg, beta, params, batch)),
                         batch.weights)


def dpo_accuracy(cfg: GPTConfig, beta: float, params: dict,
                 batch: PreferenceBatch) -> jax.Array:
    """The weighted share of comparisons with a positive implicit reward margin (a tie counts
    one half, as `pairwise_accuracy`: 0.5 at the reference)."""
    margin_B = dpo_margins(cfg, beta, params, batch)
    return weighted_mean(jnp.where(margin_B > 0, 1.0, jnp.where(margin_B == 0, 0.5, 0.0)),
                         batch.weights)


def dpo_mean_margin(cfg: GPTConfig, beta: float, params: dict,
                    batch: PreferenceBatch) -> jax.Array:
    """The weighted mean implicit reward margin (Rafailov et al. 2023's `rewards/margins`)."""
    return weighted_mean(dpo_margins(cfg, beta, params, batch), batch.weights)


def chosen_kl(cfg: GPTConfig, params: dict, batch: PreferenceBatch) -> jax.Array:
    """KL(π‖π_ref) estimated on the chosen responses: the weighted mean over comparisons of
    log π(y_c|x) − log π_ref(y_c|x), summed over the response's tokens (nats per sequence, as
    Gao et al. 2022 count KL); 0 at the reference. The responses are the data's, not samples
    of π, so it tracks how far π moved on them rather than being an unbiased KL."""
    return weighted_mean(log_ratios(cfg, params, batch)[0], batch.weights)
