"""Train batches are a pure function of (seed, step) with exact epochs; eval batches are fixed."""

import numpy as np
import pytest

from scaling.data import Batches, DataError, eval_windows, transfer_windows


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
