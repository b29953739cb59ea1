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

The validation corruption's chosen positions also make a score that compares the two objectives
on the same tokens (`train.eval_mask_rate`): -log p(x_j | context) at the held-out tokens j, a
causal model's context the tokens before j, a masked model's both sides of the corrupted window.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from scaling.batch import LmBatch, MaskedBatch
from scaling.config import MAX_VOCAB, ConfigError

MASK_TOKEN = "[MASK]"
# BERT's split of the chosen positions: [MASK], a random token, unchanged (Devlin et al. 2019)
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
# Salts of the corruption's random streams: the validation masks are fixed whatever the seed.
TRAIN_STREAM, EVAL_STREAM = 0x6D6C6D, 0x76616C
# The measurement that scores both objectives on the same held-out tokens (train.eval_mask_rate):
# the column masked_positions_loss.
MASKED_POSITIONS = "masked_positions"


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
    return _corrupt(tokens_BxT, mask_rate, vocab_size, np.random.default_rng([stream, seed, step]))


def eval_corruption(windows_KxBxT: np.ndarray, mask_rate: float, vocab_size: int) -> MaskedBatch:
    """Fixed validation batches [K, B, T] corrupted once, batch i with (seed 0, step i) of the
    evaluation stream: the same positions and replacements for every run of this mask rate
    and tokenizer, whatever its train.seed."""
    batches = [_corrupt(w, mask_rate, vocab_size, _eval_generator(i))
               for i, w in enumerate(windows_KxBxT)]
    return MaskedBatch(*(np.stack([getattr(b, f) for b in batches])
                         for f in ("inputs", "targets", "weights")))


def held_out_positions(windows_KxBxT: np.ndarray, mask_rate: float) -> np.ndarray:
    """float32 [K, B, T]: 1 at the positions `eval_corruption` chooses in these validation
    batches at this rate, 0 elsewhere and at each window's first position, which a causal model
    cannot predict (nothing precedes it). The tokens both objectives score in
    masked_positions_loss; no [MASK] id is needed to choose them."""
    K, B, T = np.shape(windows_KxBxT)
    chosen_KxBxT = np.stack([_choose(_eval_generator(i), B, T, mask_rate) for i in range(K)])
    chosen_KxBxT[..., 0] = False
    return chosen_KxBxT.astype(np.float32)


def masked_positions_batch(windows_KxBxT1: np.ndarray, mask_rate: float,
                           vocab_size: int) -> MaskedBatch:
    """A masked LM's score of the held-out tokens: each validation window's first T tokens
    ([K, B, T+1] -> [K, B, T]) under the fixed corruption at `mask_rate` (`eval_corruption`),
    the loss read at `held_out_positions` only. At the run's own stage.mask_rate it is the
    val_loss less each window's first position."""
    windows_KxBxT = np.asarray(windows_KxBxT1)[..., :-1]
    return replace(eval_corruption(windows_KxBxT, mask_rate, vocab_size),
                   weights=held_out_positions(windows_KxBxT, mask_rate))


def next_token_positions_batch(windows_KxBxT1: np.ndarray, mask_rate: float) -> LmBatch:
    """A causal LM's score of the same held-out tokens: -log p(x_j | x_<j) at the tokens j that
    `held_out_positions` picks in each window's first T. The batch reads window[:T] and predicts
    window[1:T+1], so token j is the target at position j - 1; the last target (token T,
    outside the corrupted window) weighs 0. Tokens [K, B, T+1], weights [K, B, T]."""
    windows_KxBxT1 = np.asarray(windows_KxBxT1)
    held_KxBxT = held_out_positions(windows_KxBxT1[..., :-1], mask_rate)
    weights_KxBxT = np.concatenate([held_KxBxT[..., 1:], np.zeros_like(held_KxBxT[..., :1])],
                                   axis=-1)
    return LmBatch(windows_KxBxT1, weights_KxBxT)


def _eval_generator(i: int) -> np.random.Generator:
    """The random stream of validation batch i: (seed 0, step i) of the evaluation stream."""
    return np.random.default_rng([EVAL_STREAM, 0, i])


def _choose(rng: np.random.Generator, B: int, T: int, mask_rate: float) -> np.ndarray:
    """bool [B, T]: k = masked_count(T, mask_rate) positions of each row, uniformly without
    replacement (the first draws of `rng`)."""
    chosen_BxK = np.argsort(rng.random((B, T)), axis=1)[:, :masked_count(T, mask_rate)]
    chosen_BxT = np.zeros((B, T), bool)
    np.put_along_axis(chosen_BxT, chosen_BxK, True, axis=1)
    return chosen_BxT


def _corrupt(tokens_BxT: np.ndarray, mask_rate: float, vocab_size: int,
             rng: np.random.Generator) -> MaskedBatch:
    """`bert_corruption` with the positions, shares and replacements drawn from `rng`."""
    targets_BxT = np.asarray(tokens_BxT, np.int32)
    B, T = targets_BxT.shape
    chosen_BxT = _choose(rng, B, T, mask_rate)
    draw_BxT = rng.random((B, T))
    random_BxT = rng.integers(0, vocab_size, (B, T), dtype=np.int32)
    inputs_BxT = np.where(chosen_BxT & (draw_BxT < MASK_SHARE), mask_token_id(vocab_size),
                          targets_BxT)
    replace_BxT = chosen_BxT & (draw_BxT >= MASK_SHARE) & (draw_BxT < MASK_SHARE + RANDOM_SHARE)
    inputs_BxT = np.where(replace_BxT, random_BxT, inputs_BxT).astype(np.int32)
    return MaskedBatch(inputs_BxT, targets_BxT, chosen_BxT.astype(np.float32))
