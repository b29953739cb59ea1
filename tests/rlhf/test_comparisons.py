"""Comparisons: labels from gold scores (deterministic at temperature 0, σ-distributed above),
pairs of a prompt's responses, and their JSON Lines files with errors naming file:line."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from scaling.data import DataError
from scaling.rlhf import Comparison, compare, label, read_comparisons, sft_body, write_comparisons
from scaling.rlhf.comparisons import sigmoid

from .test_gold import BROKEN, GARBAGE, PROMPT, REFERENCE


def test_at_temperature_zero_the_higher_score_wins_and_a_tie_goes_to_a():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert label(0.7, 0.3) and not label(0.3, 0.7)
    assert label(0.5, 0.5) and label(0.5, 0.5, rng=rng)
    assert [label(0.2, 0.9, rng=rng) for _ in range(100)] == [False] * 100
    assert rng.bit_generator.state == state  # no draw at temperature 0


@pytest.mark.parametrize("diff", [-2.0, -0.5, 0.0, 0.5, 1.0, 3.0])
def test_at_temperature_one_a_wins_with_probability_sigmoid_of_the_difference(diff: float):
    rng = np.random.default_rng(1)
    wins = [label(0.25 + diff, 0.25, temperature=1.0, rng=rng) for _ in range(4000)]
    # The binomial standard error is at most 0.008: 0.03 is ~4 of them.
    assert abs(np.mean(wins) - 1 / (1 + math.exp(-diff))) < 0.03


def test_sampled_labels_repeat_with_the_seed():
    def draw(seed: int) -> list[bool]:
        rng = np.random.default_rng(seed)
        return [label(0.6, 0.4, temperature=0.5, rng=rng) for _ in range(50)]
    assert draw(3) == draw(3) != draw(4)


@pytest.mark.parametrize(("temperature", "rng", "message"), [
    (-1.0, None, "temperature=-1.0: expected 0"),
    (math.nan, None, "temperature=nan: expected 0"),
    (1.0, None, "temperature=1.0 draws labels: pass rng"),
])
def test_bad_temperatures_are_one_line_errors(temperature, rng, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}[^\n]*$"):
        label(0.1, 0.2, temperature=temperature, rng=rng)


def test_sigmoid_never_overflows():
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0 and sigmoid(0.0) == 0.5


RESPONSES = [BROKEN["returns"], "", GARBAGE, REFERENCE, "  \n", REFERENCE, BROKEN["syntax"]]


def test_compare_pairs_every_two_responses_and_the_higher_gold_is_chosen():
    comparisons = compare(PROMPT, REFERENCE, RESPONSES, sft_body)
    # 5 non-blank responses make 10 pairs; the reference against its copy is a tie, dropped.
    assert len(comparisons) == 9
    for c in comparisons:
        assert c.prompt == PROMPT and c.chosen.strip() and c.rejected.strip()
        assert c.gold_chosen > c.gold_rejected
        assert c.gold_chosen == sft_body(PROMPT, c.chosen, REFERENCE).total
        assert c.gold_rejected == sft_body(PROMPT, c.rejected, REFERENCE).total
    assert comparisons[0] == Comparison(PROMPT, BROKEN["returns"], GARBAGE,
                                        sft_body(PROMPT, BROKEN["returns"], REFERENCE).total,
                                        sft_body(PROMPT, GARBAGE, REFERENCE).total)
    assert compare(PROMPT, REFERENCE, RESPONSES, sft_body) == comparisons


def test_compare_with_a_blank_prompt_or_one_response_gives_nothing():
    assert compare(" \n", REFERENCE, RESPONSES, sft_body) == []
    assert compare(PROMPT, REFERENCE, [REFERENCE, "", "\n"], sft_body) == []


def test_a_temperature_flips_labels_as_often_as_sigmoid_says():
    rng = np.random.default_rng(0)
    comparisons = compare(PROMPT, REFERENCE, RESPONSES * 10, sft_body, temperature=1.0, rng=rng)
    flipped = sum(c.gold_chosen < c.gold_rejected for c in comparisons)
    p_flip = [sigmoid(-abs(c.gold_chosen - c.gold_rejected)) for c in comparisons]
    expected, sd = sum(p_flip), math.sqrt(sum(p * (1 - p) for p in p_flip))
    assert 0 < expected - 4 * sd < flipped < expected + 4 * sd


def test_comparisons_survive_a_jsonl_round_trip(tmp_path: Path):
    comparisons = [*compare(PROMPT, REFERENCE, RESPONSES, sft_body),
                   Comparison("日本語\u2028\r\n\"q\"", "a\x1c\0b", "c", 1, -0.5)]
    path = tmp_path / "c.jsonl"
    write_comparisons(path, comparisons)
    assert len(path.read_text(encoding="utf-8").split("\n")) == len(comparisons) + 1
    assert read_comparisons(path) == comparisons
    assert read_comparisons(str(path)) == comparisons


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": 0.9, "gold_rejected": 0.1}


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "p", "chosen":', "malformed JSON"),
    ("[1, 2]", "expected a JSON object with the fields prompt, chosen, rejected, "
               "gold_chosen, gold_rejected, got a JSON array"),
    (json.dumps({**GOOD, "chosen": ""}), 'the "chosen" field is empty'),
    (json.dumps({**GOOD, "prompt": " \n"}), 'the "prompt" field is empty'),
    (json.dumps({k: v for k, v in GOOD.items() if k != "rejected"}), 'no "rejected" field'),
    (json.dumps({**GOOD, "rejected": 3}), 'the "rejected" field is a JSON number, not a string'),
    (json.dumps({**GOOD, "gold_chosen": "0.9"}),
     'the "gold_chosen" field is a JSON string, not a number'),
    (json.dumps({**GOOD, "gold_rejected": True}),
     'the "gold_rejected" field is a JSON boolean, not a number'),
    (json.dumps({**GOOD, "gold_rejected": math.nan}),
     'the "gold_rejected" field is nan, not a finite number'),
])
def test_a_bad_line_is_a_one_line_error_naming_file_and_line(tmp_path: Path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n\n{line}\n{json.dumps(GOOD)}\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{re.escape(f'{path}:3: {message}')}[^\n]*$"):
        read_comparisons(path)


def test_a_file_without_comparisons_is_an_error(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{re.escape(str(path))} holds no comparisons"):
        read_comparisons(path)
