"""Comparisons labelled by a gold reward: which of two responses to a prompt wins, and the
JSON Lines files proxy reward models are trained on.

Labels are Bradley–Terry style from gold scores. By default they are deterministic, as in Gao
et al. 2022: the higher gold score wins. With a temperature T > 0, a wins with probability
σ((gold_a − gold_b) / T): label noise, which Gao found makes proxies noisier.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scaling.data.errors import DataError
from scaling.data.pairs import JSON_TYPES
from scaling.data.text import read_json_lines
from scaling.rlhf.gold import GoldReward

TEXT_FIELDS = ("prompt", "chosen", "rejected")
GOLD_FIELDS = ("gold_chosen", "gold_rejected")


@dataclass(frozen=True)
class Comparison:
    """A prompt, the response the label prefers, the other one, and their gold scores."""

    prompt: str
    chosen: str
    rejected: str
    gold_chosen: float
    gold_rejected: float


def label(score_a: float, score_b: float, *, temperature: float = 0.0,
          rng: np.random.Generator | None = None) -> bool:
    """Whether response a wins against b, from their gold scores.

    temperature 0 (the default): a wins iff score_a > score_b, and also on a tie (the first
    argument keeps it, so the label is a function of the arguments; `compare` drops ties before
    labelling). temperature > 0: a wins with probability σ((score_a − score_b) / temperature),
    drawn from `rng`. Raises ValueError (one line) for a negative or NaN temperature, or a
    positive one without an rng.
    """
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature}: expected 0 (deterministic) or more")
    if temperature == 0:
        return score_a >= score_b
    if rng is None:
        raise ValueError(f"temperature={temperature} draws labels: pass rng (a numpy Generator)")
    return bool(rng.random() < sigmoid((score_a - score_b) / temperature))


def sigmoid(x: float) -> float:
    """σ(x) = 1 / (1 + e^−x), without overflow for any finite x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def compare(prompt: str, reference: str, responses: Sequence[str], gold: GoldReward, *,
            temperature: float = 0.0, rng: np.random.Generator | None = None) -> list[Comparison]:
    """Every pair (i < j) of `responses` to `prompt`, scored by `gold` against `reference` and
    labelled by `label`, as Comparisons in pair order.

    Dropped: pairs whose gold scores are equal (identical responses among them), responses that
    are blank, and everything when the prompt is blank. Each response is scored once.
    """
    if not prompt.strip():
        return []
    kept = [r for r in responses if r.strip()]
    scores = [gold(prompt, r, reference).total for r in kept]
    out = []
    for i in range(len(kept)):
        for j in range(i + 1, len(kept)):
            if scores[i] == scores[j]:
                continue
            w, v = (i, j) if label(scores[i], scores[j], temperature=temperature, rng=rng) \
                else (j, i)
            out.append(Comparison(prompt, kept[w], kept[v], scores[w], scores[v]))
    return out


def write_comparisons(path: str | Path, comparisons: Sequence[Comparison]) -> None:
    """Write one JSON object per line: {"prompt", "chosen", "rejected", "gold_chosen",
    "gold_rejected"}, UTF-8 text as is (read back by read_comparisons)."""
    with open(path, "w", encoding="utf-8") as f:
        for c in comparisons:
            f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")


def read_comparisons(path: str | Path) -> list[Comparison]:
    """The Comparisons of a JSON Lines file (blank lines skipped), as write_comparisons writes.

    Raises DataError, one line naming `path:line`, for a line that is not JSON or not an
    object, a missing field, a text field that is not a string or is blank, a gold score that
    is not a finite number; and for a file with no comparison.
    """
    comparisons = []
    for lineno, record in read_json_lines(str(path)):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with the fields "
                            f"{', '.join(TEXT_FIELDS + GOLD_FIELDS)}, got a JSON "
                            f"{JSON_TYPES[type(record)]}")
        for field in TEXT_FIELDS + GOLD_FIELDS:
            if field not in record:
                raise DataError(f'{where}: no "{field}" field')
            value, text = record[field], field in TEXT_FIELDS
            if text and not isinstance(value, str):
                raise DataError(f'{where}: the "{field}" field is a JSON '
                                f"{JSON_TYPES[type(value)]}, not a string")
            if text and not value.strip():
                raise DataError(f'{where}: the "{field}" field is empty')
            if not text and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise DataError(f'{where}: the "{field}" field is a JSON '
                                f"{JSON_TYPES[type(value)]}, not a number")
            if not text and not math.isfinite(value):
                raise DataError(f'{where}: the "{field}" field is {value}, not a finite number')
        comparisons.append(Comparison(*(record[f] for f in TEXT_FIELDS),
                                      *(float(record[f]) for f in GOLD_FIELDS)))
    if not comparisons:
        raise DataError(f"{path} holds no comparisons: only blank lines")
    return comparisons
