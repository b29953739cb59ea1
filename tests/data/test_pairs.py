"""Prompt/response pairs: the JSONL reader and its errors, the stdlib functions, the split by
file, and windows whose weights are 1 exactly on the response and its eos."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from scaling.data import (
    DataError,
    Example,
    encode_examples,
    read_jsonl_pairs,
    read_pairs,
    sft_stdlib,
    split_pairs,
)
from scaling.data.pairs import MAX_PROMPT_CHARS, MAX_RESPONSE_CHARS, function_pairs
from scaling.data.sources import Document
from scaling.data.tokenizer import BytesTokenizer, train_bpe

from .conftest import JAPANESE, SPLITLINES_ONLY


@pytest.fixture(scope="module")
def stdlib_pairs() -> list[Example]:
    return sft_stdlib()


@pytest.fixture(scope="module")
def bpe():
    texts = [JAPANESE, *(f"def f{i}(x):\n    return x * {i}\n" for i in range(30))]
    return train_bpe([Document(str(i), t) for i, t in enumerate(texts)], 300)


def write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_jsonl_pairs_read_every_record_and_skip_blank_lines(tmp_path):
    odd = "".join(SPLITLINES_ONLY)  # ordinary characters inside a record, not line ends
    records = [{"prompt": "Say hi.", "response": "hi"},
               {"prompt": "", "response": JAPANESE + odd, "extra": 1}]
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps(records[0]), " \t",
                                              json.dumps(records[1], ensure_ascii=False)])
    assert read_jsonl_pairs(path, "p.jsonl") == [
        Example("Say hi.", "hi", "p.jsonl:1"), Example("", JAPANESE + odd, "p.jsonl:3")]


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "a", "response": ', r"p\.jsonl:2: malformed JSON \(Expecting value\)$"),
    ('["a", "b"]', r'p\.jsonl:2: expected a JSON object with "prompt" and "response" fields, '
                   r"got a JSON array$"),
    ('{"response": "b"}', r'p\.jsonl:2: no "prompt" field$'),
    ('{"prompt": "a"}', r'p\.jsonl:2: no "response" field$'),
    ('{"prompt": null, "response": "b"}', r'p\.jsonl:2: the "prompt" field is a JSON null, not'),
    ('{"prompt": "a", "response": 3}', r'p\.jsonl:2: the "response" field is a JSON number, not'),
    ('{"prompt": "a", "response": ""}', r'p\.jsonl:2: the "response" field is empty$'),
])
def test_jsonl_errors_name_file_line_and_field_in_one_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "p.jsonl", ['{"prompt": "a", "response": "b"}', line])
    with pytest.raises(DataError, match=message) as error:
        read_jsonl_pairs(path, "p.jsonl")
    assert "\n" not in str(error.value)


def test_read_pairs_reads_jsonl_globs_named_relative_to_their_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("sft/sub").mkdir(parents=True)
    write_jsonl(Path("sft/a.jsonl"), ['{"prompt": "p", "response": "r"}'])
    write_jsonl(Path("sft/sub/b.jsonl"), ['{"prompt": "q", "response": "s"}'])
    Path("sft/readme.md").write_text("not pairs")
    assert read_pairs("jsonl", ["sft/**/*"]) == [
        Example("p", "r", "a.jsonl:1"), Example("q", "s", "sub/b.jsonl:1")]
    with pytest.raises(DataError, match=r"data.paths: sft/readme.md has an unsupported type"):
        read_pairs("jsonl", ["sft/readme.md"])
    with pytest.raises(DataError, match=r"data.source='python' has no prompt/response pairs"):
        read_pairs("python", [])


SOURCE = '''\
import functools


class Box:
    @functools.cache
    def area(self, scale: int = 1) -> int:
        """The area.

        Scaled by `scale`.
        """
        # Width first.
        w = self.w * scale

        return w * self.h * scale

    def short(self):
        """One statement only."""
        return 1

    def nested_only(self):
        """One statement holding another."""
        if self:
            return 2

    def same_line(self):
        """Code after the docstring on its line."""; a = 1
        return a

    def leftward(self):
        """A string left of the def."""
        text = """
a"""
        return text

    async def outer(self):
        """Outer."""
        def inner():
            """Inner."""
            x = 1
            return x
        return inner
'''


def test_function_pairs_split_each_function_after_its_docstring():
    pairs = function_pairs(Document("box.py", SOURCE))
    assert [p.name for p in pairs] == ["box.py:Box.area", "box.py:Box.nested_only",
                                       "box.py:Box.outer", "box.py:Box.outer.inner"]
    area = pairs[0]
    assert area.prompt == ('@functools.cache\ndef area(self, scale: int = 1) -> int:\n'
                           '    """The area.\n\n    Scaled by `scale`.\n    """\n')
    assert area.response == ("    # Width first.\n    w = self.w * scale\n\n"
                             "    return w * self.h * scale\n")
    assert pairs[3].prompt == 'def inner():\n    """Inner."""\n'
    assert function_pairs(Document("bad.py", "def f(:\n")) == []


def test_sft_stdlib_gives_thousands_of_exact_functions(stdlib_pairs):
    assert len(stdlib_pairs) > 1000
    assert len({e.file for e in stdlib_pairs}) > 100
    for e in stdlib_pairs:
        assert e.name.startswith(f"{e.file}:") and e.file.endswith(".py")
        assert len(e.prompt) <= MAX_PROMPT_CHARS and len(e.response) <= MAX_RESPONSE_CHARS
        (function,) = ast.parse(e.prompt + e.response).body  # the function's whole source
        docstring = ast.get_source_segment(e.prompt + e.response, function.body[0])
        assert e.prompt.endswith(docstring + "\n") and docstring not in e.response
        assert e.prompt.count("\n") == function.body[0].end_lineno
        assert len(function.body) > 1 and e.response.strip()


def test_sft_stdlib_is_deterministic(stdlib_pairs):
    assert sft_stdlib() == stdlib_pairs


def test_split_keeps_each_file_on_one_side(stdlib_pairs):
    split = split_pairs(stdlib_pairs, 0.05)
    assert split.rule == "by_file"
    assert sorted(split.train + split.val, key=lambda e: e.name) == sorted(
        stdlib_pairs, key=lambda e: e.name)
    assert not {e.file for e in split.train} & {e.file for e in split.val}
    assert 0.01 < len(split.val) / len(stdlib_pairs) < 0.15
    assert split_pairs(list(reversed(stdlib_pairs)), 0.05).val == list(reversed(split.val))


def test_one_jsonl_file_splits_by_example_not_by_file():
    examples = [Example("p", "r", f"one.jsonl:{i}") for i in range(1, 50)]
    with pytest.raises(DataError, match=r"49 examples from 1 files by file .* split is empty"):
        split_pairs(examples, 0.5)
    split = split_pairs(examples, 0.2, by="example")
    assert split.rule == "by_example" and split.val and split.train
    assert sorted(split.train + split.val, key=lambda e: e.name) == sorted(
        examples, key=lambda e: e.name)


EXAMPLES = [Example("def f(x):\n", "    return x + 1\n", "a:1"),
            Example("", JAPANESE, "a:2"),
            Example("Translate: " + JAPANESE * 3, "hello", "a:3")]


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_windows_hold_eos_prompt_response_eos_and_weigh_the_response(kind, bpe):
    tokenizer = BytesTokenizer() if kind == "bytes" else bpe
    eos = tokenizer.eos_id
    lengths = [2 + len(tokenizer.encode(e.prompt)) + len(tokenizer.encode(e.response))
               for e in EXAMPLES]
    n_ctx = max(lengths[:2]) + 3
    assert lengths[2] > n_ctx + 1  # the third does not fit
    windows = encode_examples(tokenizer, EXAMPLES, n_ctx)
    assert windows.tokens.shape == (2, n_ctx + 1) and windows.tokens.dtype == np.int32
    assert windows.weights.shape == (2, n_ctx) and windows.weights.dtype == np.float32
    for e, row, weight, length in zip(EXAMPLES[:2], windows.tokens, windows.weights,
                                      lengths[:2], strict=True):
        prompt = tokenizer.encode(e.prompt)
        start = 1 + len(prompt)  # the first response token
        assert row[0] == eos and row[1:start].tolist() == prompt
        assert tokenizer.decode(row[start : length - 1].tolist()) == e.response
        assert (row[length - 1 :] == eos).all()  # the final eos, then padding
        expected = np.zeros(n_ctx, np.float32)
        expected[start - 1 : length - 1] = 1  # targets row[start:length]: response and eos
        np.testing.assert_array_equal(weight, expected)
    response_tokens = sum(len(tokenizer.encode(e.response)) + 1 for e in EXAMPLES[:2])
    assert windows.counts() == {"examples": 2, "dropped": 1, "tokens": sum(lengths[:2]),
                                "response_tokens": response_tokens}


def test_no_example_fits_names_the_shortest():
    tokenizer = BytesTokenizer()
    with pytest.raises(DataError, match=r"none of the 3 examples fits n_ctx\+1=9 tokens: the "
                                        r"shortest has 29 \(eos, prompt, response, eos\)"):
        encode_examples(tokenizer, EXAMPLES, 8)
    with pytest.raises(DataError, match="no prompt/response examples"):
        encode_examples(tokenizer, [], 8)
