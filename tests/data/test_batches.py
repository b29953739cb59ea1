"""Train batches are a pure function of (seed, step) with exact epochs; eval batches are fixed."""

import numpy as np
import pytest

from scaling.data import (
    Batches,
    DataError,
    PairBatches,
    eval_pairs,
    eval_windows,
    transfer_windows,
)


def windows_of(tokens: np.ndarray, batch: np.ndarray, n_ctx: int) -> list[int]:
    """Window index of every row of a batch drawn from `tokens` = arange (token == offset)."""
    starts = batch[:, 0]
    for start, row in zip(starts, batch, strict=True):
        assert start % n_ctx == 0
        np.testing.assert_array_equal(row, tokens[start : start + n_ctx + 1])
    return (starts // n_ctx).tolist()


TOKENS = np.arange(1000, dtype=np.uint16)


def test_batch_is_a_pure_function_of_seed_and_step():
    a, b = Batches(TOKENS, 4, 16, seed=1), Batches(TOKENS, 4, 16, seed=1)
    b(57)  # b's epoch cache now differs from a's
    for step in (0, 3, 57, 1000, 2):
        np.testing.assert_array_equal(a(step), b(step))
    assert a(0).dtype == np.int32
    assert a(0).shape == (4, 17)
    assert not np.array_equal(a(0), Batches(TOKENS, 4, 16, seed=2)(0))
    assert not np.array_equal(a(0), a(1))


def test_each_epoch_visits_every_window_exactly_once():
    n_ctx, batch_size = 10, 8
    batches = Batches(TOKENS, batch_size, n_ctx, seed=0)
    n_windows = batches.windows_per_epoch
    assert n_windows == (len(TOKENS) - 1) // n_ctx == 99
    steps = 3 * n_windows // batch_size + 1  # covers three epochs; batches straddle epochs
    seen = [w for s in range(steps) for w in windows_of(TOKENS, batches(s), n_ctx)]
    epochs = [seen[e * n_windows : (e + 1) * n_windows] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n_windows))
    assert epochs[0] != epochs[1]
    assert batches.epochs(steps) == pytest.approx(steps * batch_size / n_windows)


def test_last_window_ends_at_the_final_usable_token():
    batches = Batches(np.arange(33, dtype=np.uint16), 4, 8, seed=0)
    assert batches.windows_per_epoch == 4
    assert sorted(windows_of(np.arange(33), batches(0), 8)) == [0, 1, 2, 3]


def test_too_few_tokens_for_one_batch_names_the_sizes():
    with pytest.raises(DataError, match=r"has 1024 tokens.*batch_size=16.*n_ctx\+1=65.*1025"):
        Batches(np.arange(1024, dtype=np.uint16), 16, 64, seed=0)
    assert Batches(np.arange(1025, dtype=np.uint16), 16, 64, seed=0).windows_per_epoch == 16


def test_eval_windows_spread_over_the_split_and_are_fixed():
    out = eval_windows(TOKENS, 4, 16, 3)
    assert out.shape == (3, 4, 17)
    assert out.dtype == np.int32
    starts = out[:, :, 0].ravel()
    assert (np.diff(starts) > 0).all()
    assert starts[-1] > len(TOKENS) * 0.8
    for row in out.reshape(-1, 17):
        np.testing.assert_array_equal(row, TOKENS[row[0] : row[0] + 17])
    np.testing.assert_array_equal(out, eval_windows(TOKENS, 4, 16, 3))


def test_eval_windows_shrink_to_what_the_split_holds():
    assert eval_windows(TOKENS, 4, 100, 8).shape == (2, 4, 101)  # 9 windows: 2 full batches
    small = eval_windows(np.arange(50, dtype=np.uint16), 4, 20, 8)  # 2 windows < one batch
    assert small.shape == (1, 4, 21)
    assert small[0, 0, 0] == 0
    assert small[0, -1, -1] == 49
    for row in small[0]:
        np.testing.assert_array_equal(row, np.arange(row[0], row[0] + 21))


def test_eval_windows_need_one_window():
    with pytest.raises(DataError, match=r"validation split has 20 tokens.*n_ctx\+1=21"):
        eval_windows(np.arange(20, dtype=np.uint16), 4, 20, 8)


def test_transfer_windows_need_one_full_batch():
    expected = eval_windows(TOKENS, 4, 16, 3)
    np.testing.assert_array_equal(transfer_windows(TOKENS, 4, 16, 3), expected)
    assert transfer_windows(TOKENS[:81], 4, 20, 8).shape == (1, 4, 21)
    with pytest.raises(DataError, match=r"transfer corpus .* has 80 tokens.*needs 81"):
        transfer_windows(TOKENS[:80], 4, 20, 8)


def pairs(m: int, n_ctx: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """m rows whose tokens and weights all equal the row number (to tell rows apart)."""
    tokens = np.repeat(np.arange(m, dtype=np.int32)[:, None], n_ctx + 1, axis=1)
    weights = np.repeat(np.arange(m, dtype=np.float32)[:, None], n_ctx, axis=1)
    return tokens, weights


def test_pair_batches_are_a_pure_function_of_seed_and_step():
    tokens, weights = pairs(10)
    a, b = PairBatches(tokens, weights, 4, seed=1), PairBatches(tokens, weights, 4, seed=1)
    b(57)
    for step in (0, 3, 57, 2):
        for x, y in zip(a(step), b(step), strict=True):
            np.testing.assert_array_equal(x, y)
    batch_tokens, batch_weights = a(0)
    assert (batch_tokens.shape, batch_tokens.dtype) == ((4, 7), np.int32)
    assert (batch_weights.shape, batch_weights.dtype) == ((4, 6), np.float32)
    np.testing.assert_array_equal(batch_weights, batch_tokens[:, :6])
    assert not np.array_equal(a(0)[0], PairBatches(tokens, weights, 4, seed=2)(0)[0])


def test_pair_batches_visit_every_row_once_per_epoch_in_the_windows_order():
    tokens, weights = pairs(10)
    batches = PairBatches(tokens, weights, 4, seed=3)
    rows = [int(r) for step in range(5) for r in batches(step)[0][:, 0]]  # two epochs
    assert sorted(rows[:10]) == sorted(rows[10:]) == list(range(10))
    assert batches.epochs(5) == 2.0
    # The same order as Batches over as many windows: one shuffle rule for both.
    windows = Batches(np.arange(10 * 6 + 1, dtype=np.uint16), 4, 6, seed=3)
    assert rows == [int(w) for step in range(5) for w in windows(step)[:, 0] // 6]


def test_pair_batches_need_one_batch_of_rows():
    with pytest.raises(DataError, match=r"has 3 examples .* batch_size=4"):
        PairBatches(*pairs(3), 4, seed=0)
    with pytest.raises(DataError, match="seed=-1 must be non-negative"):
        PairBatches(*pairs(8), 4, seed=-1)


def test_eval_pairs_spread_over_the_rows_and_pad_at_weight_zero():
    tokens, weights = pairs(100)
    out_tokens, out_weights = eval_pairs(tokens, weights, 8, 3)
    assert out_tokens.shape == (3, 8, 7) and out_weights.shape == (3, 8, 6)
    rows = out_tokens[:, :, 0].ravel()
    assert (np.diff(rows) > 0).all() and rows[-1] > 90
    few_tokens, few_weights = eval_pairs(*pairs(10), 4, 8)
    assert few_tokens.shape == (3, 4, 7)  # 10 rows: 2 full batches and 2 rows of padding
    assert few_tokens[:, :, 0].ravel().tolist() == [*range(10), 0, 1]
    np.testing.assert_array_equal(few_weights.reshape(12, 6)[:10], pairs(10)[1])
    assert (few_weights.reshape(12, 6)[10:] == 0).all()
    with pytest.raises(DataError, match="validation split has no examples"):
        eval_pairs(*pairs(0), 4, 8)
