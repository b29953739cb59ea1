"""Python source → its prose (docstrings and comments) or its code (without them).

The two halves of `data=prose` and `data=code` (see sources.py). A docstring here is any
statement that is a bare string literal: the docstrings of modules, classes and functions, and
the strings that document attributes or stand in for comments. Both functions raise
`SyntaxError`, `ValueError` or `tokenize.TokenError` for a source that does not parse.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize

# Comments that are not prose: a directive to a tool, and on the first two lines a shebang or
# an encoding declaration (PEP 263).
DIRECTIVE = re.compile(r"(noqa|type:|pragma|pylint:|mypy:|fmt:|isort:|ruff:|nosec)", re.I)
HEADER = re.compile(r"!|.*?coding[:=]")
# A placeholder where text was removed (source that parses holds no NUL), so that the lines
# emptied by a removal can be told from the blank lines the author wrote.
REMOVED = "\0"
# The fields of a node that hold statements (or except clauses and match cases, which do).
BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def python_code(text: str) -> str:
    """`text` without its comments and docstrings, still valid Python.

    A body left empty gets `pass`; a line emptied by a removal is dropped, trailing space left
    by one is trimmed, and runs of more than two blank lines (PEP 8's most) become two.
    Raises ValueError if the result does not parse (e.g. a docstring followed by `;`).
    """
    text = _newlines(text)
    tree = ast.parse(text)
    starts = _line_starts(text)
    cuts = [(starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1], "")
            for t in _comments(text)]
    for stmt, lone in _string_statements(tree):
        start = _offset(text, starts, stmt.lineno, stmt.col_offset)
        end = _offset(text, starts, stmt.end_lineno or stmt.lineno, stmt.end_col_offset or 0)
        cuts.append((start, end, "pass" if lone else ""))
    pieces, done = [], 0
    for start, end, replacement in sorted(cuts):
        if start >= done:  # a comment between the parts of a string is cut with the string
            pieces += [text[done:start], replacement, REMOVED]
            done = end
    marked = "".join([*pieces, text[done:]]).split("\n")
    kept = [line.replace(REMOVED, "").rstrip() if REMOVED in line else line for line in marked]
    kept = [line for line, old in zip(kept, marked, strict=True) if line or REMOVED not in old]
    code = re.sub(r"\n(\s*\n){3,}", "\n\n\n", "\n".join(kept)).strip("\n")
    try:
        ast.parse(code)
    except SyntaxError as error:
        raise ValueError(f"without comments and docstrings it does not parse: {error}") from error
    return code + "\n" if code else ""


def python_prose(text: str) -> str:
    """The docstrings (dedented) and comments (without `#`) of `text`, in source order,
    separated by blank lines; comments alone on adjacent lines make one paragraph.

    Left out: a shebang or coding line, tool directives (`# noqa`, `# type: ...`), and
    comments with no letter in them (rules, a bare `#`).
    """
    text = _newlines(text)
    pieces: list[tuple[int, str]] = []
    for stmt, _ in _string_statements(ast.parse(text)):
        value = stmt.value.value if isinstance(stmt.value, ast.Constant) else ""
        doc = inspect.cleandoc(value)
        if doc:
            pieces.append((stmt.lineno, doc))
    last_line = -1
    for token in _comments(text):
        comment, line = token.string[1:].strip(), token.start[0]
        if (DIRECTIVE.match(comment) or (line <= 2 and HEADER.match(comment))
                or not re.search(r"[^\W\d_]", comment)):
            continue
        alone = token.line.lstrip().startswith("#")
        if alone and last_line == line - 1:
            pieces[-1] = (pieces[-1][0], f"{pieces[-1][1]}\n{comment}")
        else:
            pieces.append((line, comment))
        last_line = line if alone else -1
    prose = "\n\n".join(piece for _, piece in sorted(pieces, key=lambda p: p[0]))
    return prose + "\n" if prose else ""


def _newlines(text: str) -> str:
    """\\r\\n and \\r as \\n, as the tokenizer reads them."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _comments(text: str) -> list[tokenize.TokenInfo]:
    """Every comment token of `text`."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return [t for t in tokens if t.type == tokenize.COMMENT]


def _string_statements(tree: ast.Module) -> list[tuple[ast.Expr, bool]]:
    """Each statement that is a bare string, and whether it must become `pass`: the first of
    them in a body (not a module's) that holds nothing else."""
    found, nodes = [], [tree]
    while nodes:  # statements only: no string statement hides in an expression
        node = nodes.pop()
        for field in BODIES:
            body = getattr(node, field, None)
            if not isinstance(body, list) or not body:
                continue
            nodes += body
            strings = [s for s in body if isinstance(s, ast.Expr)
                       and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)]
            lone = len(strings) == len(body) and not isinstance(node, ast.Module)
            found += [(s, lone and i == 0) for i, s in enumerate(strings)]
    return sorted(found, key=lambda found: (found[0].lineno, found[0].col_offset))


def _line_starts(text: str) -> list[int]:
    """The offset in `text` of each line's first character (lines end at \\n)."""
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _offset(text: str, starts: list[int], line: int, col_bytes: int) -> int:
    """The offset in `text` of an ast position (1-based line, column in UTF-8 bytes)."""
    start = starts[line - 1]
    prefix = text[start:start + col_bytes]
    if prefix.isascii():
        return start + col_bytes
    return start + len(text[start:].encode("utf-8")[:col_bytes].decode("utf-8"))
