"""The one text reader: lines end at "\\n" only, CRLF and a BOM are undone, bad bytes named."""

import re
from pathlib import Path

import pytest

from scaling.data import DataError
from scaling.data.text import read_lines, read_text
from tests.data.conftest import SPLITLINES_ONLY


@pytest.mark.parametrize("sep", SPLITLINES_ONLY, ids=ascii)
def test_lines_end_at_newline_only(tmp_path: Path, sep: str):
    path = tmp_path / "a.txt"
    path.write_bytes(f"one{sep}still one\ntwo\n".encode())
    assert list(read_lines(str(path))) == [(1, f"one{sep}still one"), (2, "two"), (3, "")]


def test_crlf_reads_as_lf_and_a_lone_cr_is_text(tmp_path: Path):
    lf, crlf = tmp_path / "lf.txt", tmp_path / "crlf.txt"
    lf.write_bytes(b"one\ntwo\rstill two\n\nfour")
    crlf.write_bytes(b"one\r\ntwo\rstill two\r\n\r\nfour")
    assert read_text(str(crlf)) == read_text(str(lf)) == "one\ntwo\rstill two\n\nfour"
    assert list(read_lines(str(crlf))) == [(1, "one"), (2, "two\rstill two"), (3, ""), (4, "four")]


def test_a_leading_bom_is_dropped_and_a_later_one_kept(tmp_path: Path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffword\n\ufeffnext\n".encode())
    assert read_text(str(path)) == "word\n\ufeffnext\n"


def test_invalid_utf8_names_file_and_physical_line(tmp_path: Path):
    path = tmp_path / "bad.txt"
    path.write_bytes("\ufeffone\u2028still one\x85\ntwo\r\n".encode() + b"three \xff\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not valid UTF-8 \(invalid"):
        read_text(str(path))
