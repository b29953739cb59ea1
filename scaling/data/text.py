"""Corpus files → text and lines: the one reader of every file that data.paths names.

Lines end at "\\n" only, as JSON Lines defines them (jsonlines.org). U+2028, U+2029, U+0085,
\\v, \\f and \\x1c-\\x1e are ordinary characters of the text, although `str.splitlines()`
breaks at them; they are common in scraped web text, so splitting there would cut records in
two and shift every later line number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
