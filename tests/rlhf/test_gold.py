"""The sft_body gold reward: the reference scores 1, each kind of bad body loses on its own part,
scores are deterministic, bounded and never raise, and real stdlib bodies beat shuffled ones."""

import math
import random
import statistics

import pytest

from scaling.data import sft_stdlib, split_pairs
from scaling.rlhf import GOLD_REWARDS, GoldScore, gold_reward, sft_body
from scaling.rlhf.gold import WEIGHTS, Body, similarity, syntax

PROMPT = 'def scale(values, factor):\n    """Return the values times factor, skipping None."""\n'
REFERENCE = ("    out = []\n"
             "    for v in values:\n"
             "        if v is not None:\n"
             "            out.append(v * factor)\n"
             "    return out\n")
# Bodies each broken in one way, and the part that should say so.
BROKEN = {
    "syntax": REFERENCE.replace("for v in values:", "for v in values"),
    "arguments": "    out = []\n    for v in range(10):\n        out.append(v)\n    return out\n",
    "returns": REFERENCE.replace("    return out\n", ""),
    "distinct": REFERENCE.replace("            out.append(v * factor)\n",
                                  "            out.append(v * factor)\n" * 8),
}
GARBAGE = "    ) ( = foo ] : bar\n  , , ,\n"


def score(response: str) -> GoldScore:
    return sft_body(PROMPT, response, REFERENCE)


def test_the_reference_scores_one_on_every_part():
    s = score(REFERENCE)
    assert s.total == 1.0
    assert s.parts == dict.fromkeys(WEIGHTS, 1.0)


def test_weights_sum_to_one_and_the_total_is_their_sum():
    assert math.fsum(WEIGHTS.values()) == 1.0
    for response in [REFERENCE, GARBAGE, *BROKEN.values()]:
        s = score(response)
        assert s.total == pytest.approx(sum(WEIGHTS[k] * v for k, v in s.parts.items()))


@pytest.mark.parametrize("part", BROKEN)
def test_a_broken_body_loses_most_on_the_part_that_checks_it(part: str):
    s = score(BROKEN[part])
    assert s.total < 0.95
    drops = {k: 1 - v for k, v in s.parts.items()}
    assert max(drops, key=drops.get) == part, s.parts


@pytest.mark.parametrize("response", ["", "\n\n   \n", "    # only a comment\n"], ids=repr)
def test_no_code_scores_zero_on_every_part(response: str):
    assert score(response) == GoldScore(0.0, dict.fromkeys(WEIGHTS, 0.0))


def test_garbage_scores_low():
    s = score(GARBAGE)
    assert s.total < 0.25
    assert s.parts["syntax"] == s.parts["arguments"] == s.parts["returns"] == 0.0


def test_hand_made_bodies_rank_as_a_reader_would():
    ranked = [
        REFERENCE,
        REFERENCE.replace("out", "result"),  # the same code, another name
        "    return [v * factor for v in values if v is not None]\n",  # right, written otherwise
        BROKEN["arguments"],  # a list, but not of the values
        "    out = out + out\n" * 12,  # one line, repeated
        GARBAGE,
        "",
    ]
    totals = [score(r).total for r in ranked]
    assert totals == sorted(totals, reverse=True)
    assert len(set(totals)) == len(totals)


def test_scores_are_deterministic():
    responses = [REFERENCE, GARBAGE, *BROKEN.values()]
    first = [score(r) for r in responses]
    assert [score(r) for r in reversed(responses)] == first[::-1]


def test_syntax_counts_the_parsing_prefix_inside_the_function():
    assert syntax(PROMPT, REFERENCE) == 1.0
    # 2 of 4 code lines parse before the unclosed bracket; the comment is no code line.
    assert syntax(PROMPT, "    a = 1\n    # note\n    b = 2\n    c = (\n    d = 3\n") == 0.5
    # Lines dedented to the def end the function: they are no body.
    assert syntax(PROMPT, "    return values\nprint(1)\nx = 2\ny = 3\n") == 0.25
    assert syntax(PROMPT, "return values\n") == 0.0
    assert syntax(PROMPT, "    a = 1\n    b = 2\0\n") == 0.5  # a NUL ends the parse
    assert syntax("def f(:\n", "    return 1\n") == 0.0  # a prompt that does not parse


def test_similarity_ignores_comments_and_layout():
    reflowed = REFERENCE.replace("out = []", "out = [  ]  # the result")
    assert similarity(Body.of(reflowed), Body.of(REFERENCE)) == 1.0


def test_a_string_literal_is_one_token_even_across_a_line_continuation():
    one_line = '"a\\\n b"'  # "a, a backslash-newline, b"
    triple = "f'''x\n'y'\\\n'''"
    assert Body.of(f"    s = {one_line}  # c\n").tokens == ("s", "=", one_line)
    assert Body.of(f"    s = {triple} + 1\n").tokens == ("s", "=", triple, "+", "1")


ALPHABET = ("abcdefxyz_0123456789 ()[]{}:;,.=+-*/%<>!#'\"\\\t\n\r\f\v\0é→日"
            + "return yield def if else for while ")


@pytest.mark.parametrize("seed", range(5))
def test_arbitrary_text_gets_a_bounded_score(seed: int):
    rng = random.Random(seed)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 400)))
             for _ in range(100)]
    texts += ["    x = " + "(" * 300 + ")" * 300 + "\n", "    if x:\n" * 120, '    """' * 7,
              "    x = " + "a+" * 20000 + "a\n"]
    for text in texts:
        for s in (score(text), sft_body(text, text, text), sft_body("", text, "")):
            assert 0.0 <= s.total <= 1.0
            assert all(0.0 <= v <= 1.0 for v in s.parts.values())


def test_gold_rewards_are_found_by_name():
    assert gold_reward("sft_body") is sft_body is GOLD_REWARDS["sft_body"]
    with pytest.raises(ValueError, match=r"^no gold reward 'nope': known are sft_body$"):
        gold_reward("nope")


def test_stdlib_references_beat_another_functions_body():
    """On sft_stdlib's validation functions, each reference body against the body of the
    function half the split away (another module's): docs/rlhf.md reports these numbers."""
    val = split_pairs(sft_stdlib(), 0.05).val
    n = len(val)
    reference = [sft_body(e.prompt, e.response, e.response).total for e in val]
    shuffled = [sft_body(e.prompt, val[(i + n // 2) % n].response, e.response).total
                for i, e in enumerate(val)]
    assert reference == [1.0] * n
    assert sum(r > s for r, s in zip(reference, shuffled, strict=True)) >= 0.9 * n
    assert 0.4 < statistics.mean(shuffled) < 0.8
