"""Token arrays → training batches (a pure function of seed and step) and fixed eval batches."""

from __future__ import annotations

import functools

import numpy as np

from scaling.data.errors import DataError


class EpochOrder:
    """Which item each sample of a batch is: shuffled epoch by epoch, a pure function of step.

    Epoch e visits every one of `n` items once, in the order np.random.default_rng([seed, e])
    .permutation(n), and sample i = step*batch_size + b is item i % n of epoch i // n. So batch
    `step` depends on (seed, step) alone: a resumed run needs no replay, and epochs are counted
    exactly. Needs batch_size <= n, so that one batch spans at most two epochs.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if seed < 0:
            raise DataError(f"seed={seed} must be non-negative to seed the shuffle")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        # Two epochs suffice: batch_size <= n, so one batch spans at most two.
        self._permutation = functools.lru_cache(maxsize=2)(self._shuffle)

    def epochs(self, steps: int) -> float:
        """Passes over the items that `steps` steps make."""
        return steps * self.batch_size / self.n

    def __call__(self, step: int) -> np.ndarray:
        """Item indices of batch `step`, int64 [batch_size]."""
        sample_B = step * self.batch_size + np.arange(self.batch_size)
        epoch_B, index_B = np.divmod(sample_B, self.n)
        item_B = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epoch_B):
            in_epoch = epoch_B == epoch
            item_B[in_epoch] = self._permutation(int(epoch))[index_B[in_epoch]]
        return item_B

    def _shuffle(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)


class Batches:
    """Shuffled non-overlapping windows of the train split, epoch by epoch (see EpochOrder).

    Window j is tokens[j*n_ctx : j*n_ctx + n_ctx + 1] (neighbours share one boundary token;
    inputs w[:-1], targets w[1:]); the final (len-1) % n_ctx tokens are never used.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, n_ctx: int, seed: int):
        self.tokens = tokens
        self.batch_size = batch_size
        self.n_ctx = n_ctx
        self.seed = seed
        windows = max((len(tokens) - 1) // n_ctx, 0)
        self._order = EpochOrder(windows, batch_size, seed)
        if windows < batch_size:
            raise DataError(
                f"the train split has {len(tokens)} tokens, too few for one batch of "
                f"batch_size={batch_size} windows of n_ctx+1={n_ctx + 1} tokens "
                f"(needs {batch_size * n_ctx + 1}: neighbouring windows share a token)"
            )
        self._offsets = np.arange(n_ctx + 1)

    @property
    def windows_per_epoch(self) -> int:
        return self._order.n

    def epochs(self, steps: int) -> float:
        """Passes over the train split that `steps` steps make."""
        return self._order.epochs(steps)

    def __call__(self, step: int) -> np.ndarray:
        """Batch `step` as int32 [batch_size, n_ctx + 1]."""
        return _gather(self.tokens, self._order(step) * self.n_ctx, self._offsets)


class PairBatches:
    """Shuffled rows of encoded prompt/response windows (see encode_examples), epoch by epoch
    in the order of EpochOrder: batch `step` depends on (seed, step) alone."""

    def __init__(self, tokens: np.ndarray, weights: np.ndarray, batch_size: int, seed: int):
        """`tokens` int32 [M, n_ctx + 1], `weights` float32 [M, n_ctx]; raises DataError when
        M < batch_size or the seed is negative."""
        self.tokens = tokens
        self.weights = weights
        self.batch_size = batch_size
        self.seed = seed
        self._order = EpochOrder(len(tokens), batch_size, seed)
        if len(tokens) < batch_size:
            raise DataError(
                f"the train split has {len(tokens)} examples that fit the context, too few for "
                f"one batch of batch_size={batch_size}"
            )

    def epochs(self, steps: int) -> float:
        """Passes over the train examples that `steps` steps make."""
        return self._order.epochs(steps)

    def rows(self, step: int) -> np.ndarray:
        """The example rows of batch `step`, int64 [batch_size]."""
        return self._order(step)

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `step`: tokens int32 [batch_size, n_ctx + 1], weights float32
        [batch_size, n_ctx]."""
        row_B = self.rows(step)
        return self.tokens[row_B], self.weights[row_B]


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


def eval_pairs(
    tokens: np.ndarray, weights: np.ndarray, batch_size: int, n_batches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed validation batches of encoded prompt/response windows: tokens int32
    [k, batch_size, n_ctx + 1] and weights float32 [k, batch_size, n_ctx].

    k = min(ceil(M / batch_size), n_batches) for M rows. When they hold more than k batches,
    the rows taken are spread evenly over them; when fewer, the last batch is filled with
    repeats of the first rows at weight 0, so every real row counts once. Raises DataError
    when there are no rows.
    """
    rows, real = eval_rows(len(tokens), batch_size, n_batches)
    shape = rows.shape
    rows, real = rows.ravel(), real.ravel()
    return (tokens[rows].reshape(*shape, -1),
            (weights[rows] * real[:, None]).astype(np.float32).reshape(*shape, -1))


def eval_rows(m: int, batch_size: int, n_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of M rows fill fixed validation batches, and which slots are real: int64 and
    bool [k, batch_size], k = min(ceil(M / batch_size), n_batches).

    When the rows fill more than k batches, the rows taken are spread evenly over them; when
    fewer, the last batch is filled with repeats of the first rows, marked not real (weight 0:
    every real row counts once). Raises DataError when there are no rows.
    """
    if m == 0:
        raise DataError("the validation split has no examples that fit the context")
    k = min(-(-m // batch_size), n_batches)
    count = k * batch_size
    slot = np.arange(count)
    if m >= count:
        rows, real = slot * m // count, np.ones(count, dtype=bool)
    else:
        rows, real = slot % m, slot < m
    return rows.reshape(k, batch_size), real.reshape(k, batch_size)
