"""Comparisons as a reward model reads them: the files of data.paths, a split by prompt, and
each comparison's two windows (eos, prompt, response, eos), padded with eos to n_ctx tokens.

The split is by prompt, so every comparison of a held-out prompt is held out: the reward
model's validation accuracy is measured on prompts it never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scaling.batch import ComparisonBatch
from scaling.data import DataError, Tokenizer, eval_rows
from scaling.data.sources import file_names, hash_fraction
from scaling.rlhf.comparisons import Comparison, read_comparisons


def read_comparison_files(paths: list[str]) -> list[Comparison]:
    """Every comparison of the JSONL files that `paths` (data.paths' globs) name, in order.

    Raises DataError (one line) for a glob that finds no .jsonl file, and as read_comparisons
    does for a bad line (naming file:line) or a file without comparisons.
    """
    return [c for path in file_names(paths, "data.paths", suffixes=(".jsonl",))
            for c in read_comparisons(path)]


@dataclass(frozen=True)
class ComparisonSplit:
    """Train and validation comparisons, split by prompt (see split_comparisons)."""

    train: list[Comparison]
    val: list[Comparison]

    def prompts(self) -> tuple[int, int]:
        """Distinct prompts of the train and the validation split."""
        return len({c.prompt for c in self.train}), len({c.prompt for c in self.val})


def split_comparisons(comparisons: Sequence[Comparison], val_fraction: float) -> ComparisonSplit:
    """Hold out every comparison of a prompt iff hash_fraction(prompt) < val_fraction: a pure
    function of the prompt's text, so a prompt's comparisons never straddle the splits.

    Raises DataError (one line) when either split comes out empty.
    """
    held_out = {p: hash_fraction(p) < val_fraction for p in {c.prompt for c in comparisons}}
    train = [c for c in comparisons if not held_out[c.prompt]]
    val = [c for c in comparisons if held_out[c.prompt]]
    if not train or not val:
        raise DataError(
            f"cannot split {len(comparisons)} comparisons of {len(held_out)} prompts by prompt "
            f"with data.val_fraction={val_fraction}: the {'validation' if not val else 'train'} "
            "split is empty; give comparisons of more prompts or change data.val_fraction")
    return ComparisonSplit(train, val)


@dataclass(frozen=True)
class ComparisonWindows:
    """Encoded comparisons, one per row (see encode_comparisons), and how many did not fit."""

    chosen: np.ndarray  # int32 [M, n_ctx]
    rejected: np.ndarray  # int32 [M, n_ctx]
    chosen_last: np.ndarray  # int32 [M]: the position of the closing eos
    rejected_last: np.ndarray  # int32 [M]
    response_start: np.ndarray  # int32 [M]: the position of the first response token
    dropped: int  # comparisons with a window longer than n_ctx, left out

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, rows: np.ndarray, real: np.ndarray | None = None) -> ComparisonBatch:
        """The comparisons of `rows` (any shape: [B], or [k, B] for fixed batches) as a batch,
        weight 1 where `real` (default: everywhere), else 0."""
        weights = np.ones(rows.shape, np.float32) if real is None else real.astype(np.float32)
        return ComparisonBatch(self.chosen[rows], self.rejected[rows], self.chosen_last[rows],
                               self.rejected_last[rows], weights)

    def fixed_batches(self, batch_size: int, n_batches: int) -> ComparisonBatch:
        """Fixed batches [k, batch_size, ...] spread over the rows, each row counted once
        (`scaling.data.eval_rows`): what an evaluation scores."""
        return self.batch(*eval_rows(len(self), batch_size, n_batches))

    def response_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Next-token weights [M, n_ctx - 1] of the chosen and the rejected windows: 1 where
        the target is a response token or the closing eos, 0 on the prompt and padding (as
        SFT weighs an example): what a policy's log π(response | prompt) sums over (DPO)."""
        target_position = np.arange(1, self.chosen.shape[1])[None, :]
        start = self.response_start[:, None]
        return tuple(((target_position >= start) & (target_position <= last[:, None]))
                     .astype(np.float32) for last in (self.chosen_last, self.rejected_last))


def encode_comparisons(tokenizer: Tokenizer, comparisons: Sequence[Comparison],
                       n_ctx: int) -> ComparisonWindows:
    """Two windows per comparison, chosen and rejected: eos, prompt, response, eos, padded
    with eos to n_ctx tokens, as SFT reads an example (`scaling.data.encode_examples`) but one
    token shorter: a reward model reads its n_ctx positions and predicts nothing after them.
    The reward is read at the closing eos (`*_last`), the window's last real token.

    Comparisons with a window longer than n_ctx are dropped (counted in `dropped`); raises
    DataError when none is given or none fits, naming the shortest one's length.
    """
    if not comparisons:
        raise DataError("no comparisons to encode")
    eos = tokenizer.eos_id
    encoded: dict[str, list[int]] = {}  # a prompt's comparisons share it, responses recur

    def ids(text: str) -> list[int]:
        if text not in encoded:
            encoded[text] = tokenizer.encode(text)
        return encoded[text]

    pairs, too_long = [], []
    for c in comparisons:
        prompt = [eos, *ids(c.prompt)]
        windows = [[*prompt, *ids(response), eos] for response in (c.chosen, c.rejected)]
        longest = max(len(w) for w in windows)
        if longest > n_ctx:
            too_long.append(longest)
        else:
            pairs.append((windows, len(prompt)))
    if not pairs:
        raise DataError(
            f"none of the {len(comparisons)} comparisons fits n_ctx={n_ctx} tokens: the "
            f"shortest has {min(too_long)} (eos, prompt, longer response, eos); raise "
            "model.n_ctx")
    tokens = np.full((2, len(pairs), n_ctx), eos, dtype=np.int32)
    last = np.zeros((2, len(pairs)), dtype=np.int32)
    start = np.zeros(len(pairs), dtype=np.int32)
    for m, (windows, prompt_len) in enumerate(pairs):
        start[m] = prompt_len
        for side, window in enumerate(windows):
            tokens[side, m, :len(window)] = window
            last[side, m] = len(window) - 1
    return ComparisonWindows(tokens[0], tokens[1], last[0], last[1], start,
                             dropped=len(too_long))
