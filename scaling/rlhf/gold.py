"""Gold rewards: the fixed judges that label comparisons (Gao et al. 2022, arXiv:2210.10760).

A gold reward scores a response to a prompt, given the reference response, in [0, 1], and
says why: GoldScore.parts holds each component, GoldScore.total their weighted sum. Proxy
reward models learn from its labels; the policy is measured by it. It never raises: a tiny
model's samples are arbitrary text, and every text gets a score.

`sft_body` judges data=sft_stdlib: the prompt is a function's signature and docstring, the
response its body, the reference the body the standard library has (see docs/rlhf.md).
"""

from __future__ import annotations

import ast
import io
import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

# The weight of each part in the total; they sum to 1, so the total is in [0, 1]. Whether the
# body is Python and how much it resembles the reference carry most of it (docs/rlhf.md).
WEIGHTS = {"syntax": 0.3, "similarity": 0.3, "arguments": 0.1, "returns": 0.1,
           "distinct": 0.1, "length": 0.1}
# Parses tried when looking for the longest prefix of a body that parses (see syntax).
MAX_PARSES = 5
# distinct counts repeated token n-grams of this length; similarity averages n = 1..this.
NGRAM = 4

# Python's lexemes, loosely: comments (dropped), strings (one token each, prefixes included,
# continued over a backslash-newline: DOTALL), names and keywords, numbers, the multi-character
# operators, then any other visible character. One pass; matches anything, raises on nothing.
_TOKEN = re.compile(r"""
    \#[^\r\n]*
  | [rRbBuUfF]{0,2}(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
                    |'(?:\\.|[^'\\\r\n])*'|"(?:\\.|[^"\\\r\n])*")
  | [^\W\d]\w*
  | \d[\w.]*
  | \*\*=?|//=?|>>=?|<<=?|->|:=|\.\.\.|[-+*/%&|^@=<>!]=
  | \S
""", re.VERBOSE | re.DOTALL)
_NAME = re.compile(r"[^\W\d]\w*")
# A line that returns or yields a value: `return` with an expression other than None, `yield`.
_RETURNS = re.compile(r"^[ \t]*(?:return\b[ \t]*(?!None\b[ \t]*(?:[#;\r\n]|$))[^\s#;]|yield\b)",
                      re.MULTILINE)


@dataclass(frozen=True)
class GoldScore:
    """A gold reward's verdict: `total` in [0, 1] and the parts it is made of, each in [0, 1]."""

    total: float
    parts: Mapping[str, float]


GoldReward = Callable[[str, str, str], GoldScore]


@dataclass(frozen=True)
class Body:
    """A function body as the parts see it: its code tokens, their n-grams, names and lines."""

    text: str
    tokens: tuple[str, ...]  # comments dropped; a string literal is one token
    grams: tuple[Counter[tuple[str, ...]], ...]  # grams[n - 1]: n-gram counts, n = 1..NGRAM
    names: frozenset[str]  # names read or written, attributes (after a ".") left out
    lines: tuple[str, ...]  # non-blank lines, stripped

    @classmethod
    def of(cls, text: str) -> Body:
        """The tokens, n-grams, names and lines of `text`; any text is a Body (garbage too)."""
        tokens = tuple(t for t in _TOKEN.findall(text) if t[0] != "#")
        grams = tuple(Counter(zip(*(tokens[i:] for i in range(n)), strict=False))
                      for n in range(1, NGRAM + 1))
        names = frozenset(t for prev, t in zip(("", *tokens), tokens, strict=False)
                          if prev != "." and _NAME.fullmatch(t))
        lines = tuple(s for line in text.splitlines() if (s := line.strip()))
        return cls(text, tokens, grams, names, lines)


def sft_body(prompt: str, response: str, reference: str) -> GoldScore:
    """Score `response` as the body of the function whose signature and docstring are `prompt`,
    against the `reference` body: the WEIGHTS-weighted sum of the parts, in [0, 1].

    The reference itself scores 1 (every part compares to it). A response without a code token
    (empty, blank, only comments) is no body: every part is 0. Never raises.
    """
    body, ref = Body.of(response), _reference(reference)
    if not body.tokens:
        return GoldScore(0.0, dict.fromkeys(WEIGHTS, 0.0))
    parts = {
        "syntax": syntax(prompt, response),
        "similarity": similarity(body, ref),
        "arguments": arguments(_parameters(prompt), body, ref),
        "returns": returns(body, ref),
        "distinct": distinct(body, ref),
        "length": length(body, ref),
    }
    return GoldScore(math.fsum(WEIGHTS[k] * v for k, v in parts.items()), parts)


def syntax(prompt: str, response: str) -> float:
    """The share of the response's code lines (neither blank nor only a comment) that parse as
    the function's body: those of its longest prefix that, under `prompt`, parses.

    1 when the whole body parses. Lines after the function has ended (dedented to the `def`)
    are no body. The prefix is found by cutting before the line each SyntaxError names (or the
    first with a NUL, which the parser refuses), at most MAX_PARSES parses; 0 when none parses
    within them, or when `prompt` alone does not.
    """
    head = prompt if prompt.endswith(("\n", "\r")) else prompt + "\n"
    lines = _source_lines(response)
    code = [bool(s) and not s.startswith("#") for s in (line.strip() for line in lines)]
    if not any(code):
        return 0.0
    offset = len(_source_lines(head))
    keep = next((i for i, line in enumerate(lines) if "\0" in line), len(lines))
    for _ in range(MAX_PARSES):
        tree, error_line = _parse(head + "".join(lines[:keep]))
        if tree is not None:
            if not tree.body or not isinstance(tree.body[0], ast.FunctionDef
                                               | ast.AsyncFunctionDef):
                return 0.0
            end = tree.body[0].end_lineno - offset  # the body's last line, within the response
            return sum(code[: max(end, 0)]) / sum(code)
        if error_line <= offset:  # the prompt itself does not parse
            return 0.0
        keep = min(keep, error_line - offset) - 1
        if keep <= 0:
            return 0.0
    return 0.0


def similarity(body: Body, reference: Body) -> float:
    """How much the body's code resembles the reference's: the F1 of their token n-grams
    (counted with multiplicity), averaged over n = 1..NGRAM, as chrF does with characters.

    1 for a body with the reference's tokens in its order; 0 when they share no token.
    """
    scores = []
    for ours, theirs in zip(body.grams, reference.grams, strict=True):
        if not ours or not theirs:
            scores.append(float(ours == theirs))
            continue
        common = sum((ours & theirs).values())
        scores.append(2 * common / (sum(ours.values()) + sum(theirs.values())))
    return sum(scores) / len(scores)


def arguments(parameters: frozenset[str], body: Body, reference: Body) -> float:
    """The share of the parameters the reference uses that the body uses too (by name).

    Parameters the reference leaves unused (kept for an interface) are not asked for; 1 when
    the reference uses none.
    """
    needed = parameters & reference.names
    return len(needed & body.names) / len(needed) if needed else 1.0


def returns(body: Body, reference: Body) -> float:
    """1 if the body returns (or yields) a value where the reference does, else 0; 1 when the
    reference returns nothing, so a procedure is not asked for a value.

    A value is `return` with an expression other than None, or `yield`, at a line's start.
    """
    if not _returns_value(reference.text):
        return 1.0
    return float(_returns_value(body.text))


def distinct(body: Body, reference: Body) -> float:
    """How little the body repeats itself, relative to the reference: its distinctness over
    the reference's, capped at 1.

    Distinctness is the smaller of the shares of distinct non-blank lines and of distinct token
    NGRAM-grams (1 for a body too short to repeat), so a loop of one line scores near 0.
    """
    return min(1.0, _distinctness(body) / _distinctness(reference))


def length(body: Body, reference: Body) -> float:
    """How close the body's token count is to the reference's: √min(r, 1/r), r the ratio of
    their counts (each plus one); half or twice as long scores 0.71, ten times 0.32."""
    ratio = (len(body.tokens) + 1) / (len(reference.tokens) + 1)
    return min(ratio, 1 / ratio) ** 0.5


GOLD_REWARDS: dict[str, GoldReward] = {"sft_body": sft_body}


def gold_reward(name: str) -> GoldReward:
    """The gold reward called `name` in GOLD_REWARDS; ValueError (one line) for another name."""
    if name not in GOLD_REWARDS:
        raise ValueError(f"no gold reward {name!r}: known are {', '.join(sorted(GOLD_REWARDS))}")
    return GOLD_REWARDS[name]


@lru_cache(maxsize=4096)
def _reference(text: str) -> Body:
    """Body.of, cached: every sample of a prompt is scored against the same reference."""
    return Body.of(text)


@lru_cache(maxsize=4096)
def _parameters(prompt: str) -> frozenset[str]:
    """The parameter names of the function `prompt` defines ({} if it defines none)."""
    tree, _ = _parse(prompt)
    if tree is None or not tree.body or not isinstance(tree.body[0], ast.FunctionDef
                                                       | ast.AsyncFunctionDef):
        return frozenset()
    args = tree.body[0].args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return frozenset(a.arg for a in every if a is not None)


def _parse(source: str) -> tuple[ast.Module | None, int]:
    """(the module, 0), or (None, the line the error names; 0 if it names none)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning: invalid escapes in a sample
            return ast.parse(source), 0
    except SyntaxError as e:
        return None, e.lineno or 0
    except (ValueError, RecursionError, MemoryError):  # null bytes; nesting too deep to parse
        return None, 0


def _source_lines(text: str) -> list[str]:
    """Lines as the parser counts them: ended by \\n, \\r\\n or \\r only."""
    return io.StringIO(text, newline="").readlines()


def _distinctness(body: Body) -> float:
    """min(distinct lines / lines, distinct NGRAM-grams / NGRAM-grams); 1 when there are none."""
    grams = body.grams[-1]
    shares = [len(set(body.lines)) / len(body.lines) if body.lines else 1.0,
              len(grams) / sum(grams.values()) if grams else 1.0]
    return min(shares)


def _returns_value(text: str) -> bool:
    """Whether a line of `text` starts with `return <value>` (not None) or `yield`."""
    return _RETURNS.search(text) is not None
