"""Corpus files → text and lines: the one reader of every file that data.paths names.

Lines end at "\\n" only, as JSON Lines defines them (jsonlines.org). U+2028, U+2029, U+0085,
\\v, \\f and \\x1c-\\x1e are ordinary characters of the text, although `str.splitlines()`
breaks at them; they are common in scraped web text, so splitting there would cut records in
two and shift every later line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.data.errors import DataError


def read_text(path: str) -> str:
    """The UTF-8 text of `path` without a leading byte order mark, CRLF line ends read as "\\n".

    A lone "\\r" is kept: only "\\n" ends a line. Raises DataError naming `path:line` (1-based,
    counted by "\\n") at the first byte that is not UTF-8.
    """
    try:
        # utf-8-sig drops a leading BOM, which editors on Windows write and which is no text.
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    return text.replace("\r\n", "\n")


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every physical line of `path` (see read_text), numbered from 1.

    Text after the last "\\n" is a line of its own, empty when the file ends with "\\n".
    """
    return enumerate(read_text(path).split("\n"), start=1)


# What JSON itself skips between values (RFC 8259 §2): a .jsonl line of only these is blank.
# str.strip() would also drop U+2028, U+0085 and \x1c-\x1f, which are no JSON whitespace.
JSON_WHITESPACE = " \t\r"


def read_json_lines(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSON Lines file.

    Parsed with strict=False: raw control characters (\v, \f, \x1c-\x1e, tab) that JSON wants
    escaped but scraped corpora hold raw are text, unambiguous since records end at "\n" only.
    Raises DataError naming `path:line` for a line that is not JSON.
    """
    for lineno, line in read_lines(path):
        if not line.strip(JSON_WHITESPACE):
            continue
        try:
            yield lineno, json.loads(line, strict=False)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
