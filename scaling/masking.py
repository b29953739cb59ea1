"""BERT's corruption of token windows for a masked LM (stage=mlm), a pure function of
(seed, step).

Of each window's T positions, k = max(1, round(mask_rate·T)) are chosen uniformly without
replacement; each chosen one becomes the [MASK] token with probability 0.8, a token drawn
uniformly from the tokenizer's vocabulary with probability 0.1, and stays itself with
probability 0.1 (Devlin et al. 2019, §3.1 and appendix C.2). The loss reads the chosen
positions only (`MaskedBatch.weights`). A fixed k per window (rather than a coin per position)
makes the tokens predicted per step exact: B·k.

[MASK] is not a token of either tokenizer (BPE or bytes): it takes the id after the tokenizer's
last, `mask_token_id`, so existing token ids, vocabularies, caches and run ids are unchanged,
and a masked LM's embedding has one row more than its tokenizer's vocabulary.
"""

from __future__ import annotations

import numpy as np

from scaling.batch import MaskedBatch
from scaling.config import MAX_VOCAB, ConfigError

MASK_TOKEN = "[MASK]"
# BERT's split of the chosen positions: [MASK], a random token, unchanged (Devlin et al. 2019)
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
# Salts of the corruption's random streams: the validation masks are fixed whatever the seed.
TRAIN_STREAM, EVAL_STREAM = 0x6D6C6D, 0x76616C


def mask_token_id(vocab_size: int) -> int:
    """[MASK]'s id for a tokenizer of `vocab_size` tokens: the one after its last.

    Raises ConfigError (one line) when the vocabulary has no room for it: a run's vocabulary,
    [MASK] included, is at most MAX_VOCAB tokens (data.vocab_size's cap)."""
    if vocab_size + 1 > MAX_VOCAB:
        raise ConfigError(f"the tokenizer's {vocab_size} tokens leave no room for the {MASK_TOKEN} "
                          f"token stage=mlm adds: a run's vocabulary is at most {MAX_VOCAB} "
                          f"(use data.vocab_size <= {MAX_VOCAB - 1})")
    return vocab_size


def masked_count(n_ctx: int, mask_rate: float) -> int:
    """k, the positions chosen in each window of n_ctx tokens: max(1, round(mask_rate·n_ctx))."""
    return max(1, round(mask_rate * n_ctx))


def bert_corruption(tokens_BxT: np.ndarray, mask_rate: float, vocab_size: int, seed: int,
                    step: int, stream: int = TRAIN_STREAM) -> MaskedBatch:
    """Windows [B, T] corrupted as BERT's pretraining does (module docstring), a pure function
    of (tokens, mask_rate, vocab_size, seed, step, stream).

    `vocab_size` is the tokenizer's: random replacements are drawn from its ids [0,
    vocab_size), and [MASK] is `mask_token_id(vocab_size)`. Returns a MaskedBatch of host
    arrays: inputs and targets int32 [B, T], weights float32 [B, T] (1 at the k chosen
    positions of each row)."""
    targets_BxT = np.asarray(tokens_BxT, np.int32)
    B, T = targets_BxT.shape
    rng = np.random.default_rng([stream, seed, step])
    k = masked_count(T, mask_rate)
    chosen_BxK = np.argsort(rng.random((B, T)), axis=1)[:, :k]
    chosen_BxT = np.zeros((B, T), bool)
    np.put_along_axis(chosen_BxT, chosen_BxK, True, axis=1)
    draw_BxT = rng.random((B, T))
    random_BxT = rng.integers(0, vocab_size, (B, T), dtype=np.int32)
    inputs_BxT = np.where(chosen_BxT & (draw_BxT < MASK_SHARE), mask_token_id(vocab_size),
                          targets_BxT)
    replace_BxT = chosen_BxT & (draw_BxT >= MASK_SHARE) & (draw_BxT < MASK_SHARE + RANDOM_SHARE)
    inputs_BxT = np.where(replace_BxT, random_BxT, inputs_BxT).astype(np.int32)
    return MaskedBatch(inputs_BxT, targets_BxT, chosen_BxT.astype(np.float32))


def eval_corruption(windows_KxBxT: np.ndarray, mask_rate: float, vocab_size: int) -> MaskedBatch:
    """Fixed validation batches [K, B, T] corrupted once, batch i with (seed 0, step i) of the
    evaluation stream: the same positions and replacements for every run of this mask rate
    and tokenizer, whatever its train.seed."""
    batches = [bert_corruption(w, mask_rate, vocab_size, 0, i, EVAL_STREAM)
               for i, w in enumerate(windows_KxBxT)]
    return MaskedBatch(*(np.stack([getattr(b, f) for b in batches])
                         for f in ("inputs", "targets", "weights")))
