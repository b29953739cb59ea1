"""Token arrays → training batches (a pure function of seed and step) and fixed eval batches."""

from __future__ import annotations

import functools

import numpy as np

from scaling.data.errors import DataError


class Batches:
    """Shuffled non-overlapping windows of the train split, epoch by epoch.

    Window j is tokens[j*n_ctx : j*n_ctx + n_ctx + 1] (neighbours share one boundary token;
    inputs w[:-1], targets w[1:]); the final (len-1) % n_ctx tokens are never used. Epoch e
    visits every window once, in the order np.random.default_rng([seed, e]).permutation, and
    sample i = step*batch_size + b is window i % W of epoch i // W. So batch(step) depends on
    (seed, step) alone: a resumed run needs no replay, and epochs are counted exactly.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, n_ctx: int, seed: int):
        if seed < 0:
            raise DataError(f"seed={seed} must be non-negative to seed the shuffle")
        self.tokens = tokens
        self.batch_size = batch_size
        self.n_ctx = n_ctx
        self.seed = seed
        self._windows = max((len(tokens) - 1) // n_ctx, 0)
        if self._windows < batch_size:
            raise DataError(
                f"the train split has {len(tokens)} tokens, too few for one batch of "
                f"batch_size={batch_size} windows of n_ctx+1={n_ctx + 1} tokens "
                f"(needs {batch_size * n_ctx + 1}: neighbouring windows share a token)"
            )
        self._offsets = np.arange(n_ctx + 1)
        # Two epochs suffice: batch_size <= W, so one batch spans at most two.
        self._permutation = functools.lru_cache(maxsize=2)(self._shuffle)

    @property
    def windows_per_epoch(self) -> int:
        return self._windows

    def epochs(self, steps: int) -> float:
        """Passes over the train split that `steps` steps make."""
        return steps * self.batch_size / self._windows

    def __call__(self, step: int) -> np.ndarray:
        """Batch `step` as int32 [batch_size, n_ctx + 1]."""
        sample_B = step * self.batch_size + np.arange(self.batch_size)
        epoch_B, index_B = np.divmod(sample_B, self._windows)
        window_B = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epoch_B):
            in_epoch = epoch_B == epoch
            window_B[in_epoch] = self._permutation(int(epoch))[index_B[in_epoch]]
        return _gather(self.tokens, window_B * self.n_ctx, self._offsets)

    def _shuffle(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self._windows)


def eval_windows(tokens: np.ndarray, batch_size: int, n_ctx: int, n_batches: int) -> np.ndarray:
    """Fixed validation batches, int32 [k, batch_size, n_ctx + 1], windows spread over the split.

    k = n_batches when the split holds that many non-overlapping windows, else as many full
    batches as it holds (at least 1); a split shorter than one batch gives one batch of evenly
    spaced, overlapping windows. Every window is a contiguous stretch of the split.
    """
    if len(tokens) < n_ctx + 1:
        raise DataError(
            f"the validation split has {len(tokens)} tokens, fewer than one window of "
            f"n_ctx+1={n_ctx + 1}; use a larger corpus or data.val_fraction"
        )
    n_windows = (len(tokens) - 1) // n_ctx
    k = min(max(n_windows // batch_size, 1), n_batches)
    count = k * batch_size
    if n_windows >= count:
        starts = np.arange(count) * n_windows // count * n_ctx
    else:
        starts = np.linspace(0, len(tokens) - n_ctx - 1, count).round().astype(np.int64)
    return _gather(tokens, starts, np.arange(n_ctx + 1)).reshape(k, batch_size, n_ctx + 1)


def _gather(tokens: np.ndarray, starts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Rows tokens[s : s + len(offsets)] for each start, in one fancy-indexing read."""
    return tokens[starts[:, None] + offsets].astype(np.int32)


def transfer_windows(tokens: np.ndarray, batch_size: int, n_ctx: int, n_batches: int) -> np.ndarray:
    """Fixed batches of the transfer corpus, as `eval_windows`, which must hold one full batch
    of non-overlapping windows: fewer would score the same text several times."""
    needed = batch_size * n_ctx + 1
    if len(tokens) < needed:
        raise DataError(
            f"the transfer corpus (data.transfer) has {len(tokens)} tokens, too few for one "
            f"evaluation batch of batch_size={batch_size} windows of n_ctx+1={n_ctx + 1} tokens "
            f"(needs {needed}); give it more text or use data.transfer=none"
        )
    return eval_windows(tokens, batch_size, n_ctx, n_batches)
