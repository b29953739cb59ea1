"""Prompt → response pairs for supervised fine-tuning: read, split by file, encode into windows.

An Example is named `<file>:<where>` (a JSONL line number, or a function's qualified name).
The file part, everything before the last ":", decides the split, so the examples of one file
(one module's functions, which share names and idioms) never straddle train and validation.
"""

from __future__ import annotations

import ast
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from scaling.data.errors import DataError
from scaling.data.sources import Document, file_names, hash_fraction, read_corpus
from scaling.data.text import read_json_lines
from scaling.data.tokenizer import Tokenizer

# Which documented functions sft_stdlib keeps: at least MIN_STATEMENTS statements after the
# docstring, nested ones counted, so the response is more than a bare `return` or delegation;
# at most MAX_PROMPT_CHARS and MAX_RESPONSE_CHARS characters, so one example is not a module.
MIN_STATEMENTS = 2
MAX_PROMPT_CHARS = 2000
MAX_RESPONSE_CHARS = 2000
# JSON's names for what json.loads returns, for error messages.
JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
              bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class Example:
    """One prompt and the response trained on, named `<file>:<line or qualified name>`."""

    prompt: str
    response: str
    name: str

    @property
    def file(self) -> str:
        """The file the example came from: its split unit."""
        return self.name.rpartition(":")[0]


def read_pairs(source: str, paths: list[str]) -> list[Example]:
    """The examples of `source`: sft_stdlib (the standard library's documented functions) or
    jsonl (the JSONL files of data.paths' globs).

    Raises DataError for another source, a bad JSONL line (see read_jsonl_pairs) or no examples.
    """
    if source == "sft_stdlib":
        return sft_stdlib()
    if source != "jsonl":
        raise DataError(f"data.source={source!r} has no prompt/response pairs: expected "
                        "sft_stdlib (the standard library's documented functions) or jsonl")
    names = file_names(paths, "data.paths", suffixes=(".jsonl",))
    examples = [e for path, name in names.items() for e in read_jsonl_pairs(path, name)]
    if not examples:
        raise DataError(f"data.paths={paths} hold no prompt/response pairs: only blank lines")
    return examples


def read_jsonl_pairs(path: str, name: str) -> list[Example]:
    """One Example per non-blank line of `path`, an object with string "prompt" and "response".

    Examples are named `<name>:<line>`. Raises DataError, one line naming `path:line`, for a
    line that is not JSON or not an object, a missing or non-string field, or an empty response.
    """
    examples = []
    for lineno, record in read_json_lines(path):
        if not isinstance(record, dict):
            raise DataError(f'{path}:{lineno}: expected a JSON object with "prompt" and '
                            f'"response" fields, got a JSON {JSON_TYPES[type(record)]}')
        for field in ("prompt", "response"):
            if field not in record:
                raise DataError(f'{path}:{lineno}: no "{field}" field')
            if not isinstance(record[field], str):
                raise DataError(f'{path}:{lineno}: the "{field}" field is a JSON '
                                f"{JSON_TYPES[type(record[field])]}, not a string")
        if not record["response"]:
            raise DataError(f'{path}:{lineno}: the "response" field is empty')
        examples.append(Example(record["prompt"], record["response"], f"{name}:{lineno}"))
    return examples


def sft_stdlib() -> list[Example]:
    """Every kept documented function of this interpreter's standard library (the files
    data.source=stdlib reads), as function_pairs makes them; in file order, then source order."""
    return [e for d in read_corpus("stdlib", []).documents for e in function_pairs(d)]


def function_pairs(document: Document) -> list[Example]:
    """The documented functions and methods of one Python source file as prompt → response.

    Prompt: the decorators and `def` line(s) and the docstring, as written. Response: the
    source lines after the docstring through the function's last statement. Both are dedented
    by the `def` line's indentation, so prompt + response is the function's source text. Kept
    are functions with MIN_STATEMENTS or more statements after the docstring and at most
    MAX_PROMPT_CHARS / MAX_RESPONSE_CHARS characters, whose source moves exactly: nothing else
    on the docstring's last line, every non-blank line indented at least as far as the `def`.
    Named `<document name>:<qualified name>`; [] for a file that does not parse.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # invalid escapes in old modules
            tree = ast.parse(document.text)
    except (SyntaxError, ValueError):
        return []
    # Lines as the parser counts them (\n, \r\n, \r), not str.splitlines (also \f, \v, ...).
    lines = io.StringIO(document.text, newline="").readlines()
    pairs = (_pair(lines, node, f"{document.name}:{qualname}")
             for qualname, node in _functions(tree))
    return [p for p in pairs if p is not None]


def _functions(
    node: ast.AST, prefix: str = ""
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function below `node`, nested ones after their parent."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if not isinstance(child, ast.ClassDef):
                yield prefix + child.name, child
            yield from _functions(child, f"{prefix}{child.name}.")
        elif not isinstance(child, ast.expr):  # a def is a statement: never inside expressions
            yield from _functions(child, prefix)


def _pair(
    lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef, name: str
) -> Example | None:
    """The Example of one function (see function_pairs), or None if it is not kept."""
    doc, *rest = node.body
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)):
        return None
    if not rest or rest[0].lineno <= doc.end_lineno or not _enough_statements(rest):
        return None
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    indent = lines[first - 1][: node.col_offset]
    moved = [_dedent(line, indent) for line in lines[first - 1 : node.end_lineno]]
    if indent.strip() or None in moved:
        return None
    head = doc.end_lineno - first + 1
    prompt, response = "".join(moved[:head]), "".join(moved[head:])
    if len(prompt) > MAX_PROMPT_CHARS or len(response) > MAX_RESPONSE_CHARS:
        return None
    return Example(prompt, response, name)


def _enough_statements(body: list[ast.stmt]) -> bool:
    """Whether `body` holds MIN_STATEMENTS statements, nested ones counted (walked only when
    the top level has too few: walking every body dominates the build time)."""
    if len(body) >= MIN_STATEMENTS:
        return True
    return sum(isinstance(n, ast.stmt) for s in body for n in ast.walk(s)) >= MIN_STATEMENTS


def _dedent(line: str, indent: str) -> str | None:
    """`line` without `indent`; a blank line loses its spaces; None if it starts left of it."""
    if line.startswith(indent):
        return line[len(indent):]
    if not line.strip():
        return line.lstrip(" \t\f")
    return None


@dataclass(frozen=True)
class PairSplit:
    """Train and validation examples, and the rule that split them (see split_pairs)."""

    train: list[Example]
    val: list[Example]
    rule: str


def split_pairs(examples: Sequence[Example], val_fraction: float, by: str = "file") -> PairSplit:
    """Split deterministically, `by` "file" (rule "by_file": all examples of a file are held
    out iff hash_fraction(file) < val_fraction; sft_stdlib, whose functions share a module's
    names and idioms) or by "example" (rule "by_example", on each example's name: one JSONL
    file of independent pairs).

    Raises DataError (one line) when either split comes out empty.
    """
    held_out = [hash_fraction(e.file if by == "file" else e.name) < val_fraction
                for e in examples]
    train = [e for e, h in zip(examples, held_out, strict=True) if not h]
    val = [e for e, h in zip(examples, held_out, strict=True) if h]
    if not train or not val:
        units = f"{len({e.file for e in examples})} files by file" if by == "file" else "example"
        raise DataError(
            f"cannot split {len(examples)} examples from {units} with "
            f"data.val_fraction={val_fraction}: the {'validation' if not val else 'train'} "
            "split is empty; give more examples or change data.val_fraction"
        )
    return PairSplit(train, val, f"by_{by}")


@dataclass(frozen=True)
class PairWindows:
    """Encoded examples, one per row (see encode_examples), and how many did not fit."""

    tokens: np.ndarray  # int32 [M, n_ctx + 1]
    weights: np.ndarray  # float32 [M, n_ctx]: 1 where the target is a response token or eos
    lengths: np.ndarray  # int64 [M]: tokens of each example before the padding
    dropped: int  # examples longer than n_ctx + 1 tokens, left out

    def counts(self) -> dict[str, int]:
        """Examples kept and dropped, response tokens trained on (eos included), all tokens."""
        return {"examples": len(self.tokens), "dropped": self.dropped,
                "response_tokens": int(self.weights.sum()), "tokens": int(self.lengths.sum())}


def encode_examples(tokenizer: Tokenizer, examples: Sequence[Example], n_ctx: int) -> PairWindows:
    """One window per example: eos, prompt, response, eos, padded with eos to n_ctx + 1 tokens.

    The leading eos is the document boundary pretraining put before every document's first
    token, so an empty prompt still conditions the response. weights[m, t] = 1 iff target
    tokens[m, t + 1] is a response token or the final eos; 0 for prompt and padding targets.
    Prompt and response are encoded separately, so the response's tokens decode to exactly the
    response. Examples longer than n_ctx + 1 tokens are dropped (counted in `dropped`); raises
    DataError when no example is given or none fits, naming the shortest one's length.
    """
    if not examples:
        raise DataError("no prompt/response examples to encode")
    eos = tokenizer.eos_id
    rows, starts, too_long = [], [], []
    for e in examples:
        prompt = [eos, *tokenizer.encode(e.prompt)]
        ids = [*prompt, *tokenizer.encode(e.response), eos]
        if len(ids) > n_ctx + 1:
            too_long.append(len(ids))
        else:
            rows.append(ids)
            starts.append(len(prompt))
    if not rows:
        raise DataError(
            f"none of the {len(examples)} examples fits n_ctx+1={n_ctx + 1} tokens: the "
            f"shortest has {min(too_long)} (eos, prompt, response, eos); raise model.n_ctx"
        )
    tokens = np.full((len(rows), n_ctx + 1), eos, dtype=np.int32)
    weights = np.zeros((len(rows), n_ctx), dtype=np.float32)
    for m, (ids, start) in enumerate(zip(rows, starts, strict=True)):
        tokens[m, : len(ids)] = ids
        weights[m, start - 1 : len(ids) - 1] = 1.0  # the targets ids[start:]
    lengths = np.array([len(ids) for ids in rows], dtype=np.int64)
    return PairWindows(tokens, weights, lengths, dropped=len(too_long))
