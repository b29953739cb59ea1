"""A user's own dataset on disk → documents (`data=hf data.path=DIR data.text_column=text`).

Three layouts, all read offline with pyarrow (no `datasets` library, no network):
- a directory written by `datasets`' `Dataset.save_to_disk`: Arrow stream files named in its
  state.json (`_data_files`), beside dataset_info.json;
- Parquet files (`.parquet`), or Arrow stream files (`.arrow`, as `datasets` caches them);
- JSON Lines files (`.jsonl`): one object per line.
`data.path` is such a directory, one file, a directory of files (read recursively) or a glob.
Each row's `data.text_column` (a string) is one document, named `<file>:<row>` (`<file>:<line>`
for JSON Lines, as data=files names them), the file relative to data.path's root, so the split
and the cache key do not depend on where the dataset lives. A null text is no document.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from scaling.data.errors import DataError
from scaling.data.sources import Corpus, Document, file_names
from scaling.data.text import read_json_lines

TABLE_SUFFIXES = (".arrow", ".jsonl", ".parquet")
STATE_FILE = "state.json"  # save_to_disk's list of a Dataset's Arrow files
DICT_FILE = "dataset_dict.json"  # save_to_disk's list of a DatasetDict's splits


def read_user_corpus(path: str, text_column: str) -> Corpus:
    """The documents of the dataset at `path` (see the module's docstring) from `text_column`.

    Raises DataError, naming data.path or data.text_column, for a path that does not exist, a
    directory that is not a dataset, a DatasetDict (one split must be chosen), a column that
    is not there (naming those that are) or holds no strings, and an unreadable file.
    """
    root = Path(path).expanduser()
    if root.is_dir() and (root / DICT_FILE).is_file():
        splits = json.loads((root / DICT_FILE).read_text("utf-8")).get("splits", [])
        raise DataError(
            f"data.path: {path} holds a DatasetDict saved with save_to_disk (splits: "
            f"{', '.join(splits)}): point data.path at one split, e.g. {root / splits[0]}"
            if splits else f"data.path: {path} holds a DatasetDict with no splits")
    if root.is_dir() and (root / STATE_FILE).is_file():
        files = {str(root / name): name for name in _saved_files(root)}
    elif root.is_dir() and not any(p.is_file() and p.name.lower().endswith(TABLE_SUFFIXES)
                                   for p in root.rglob("*")):
        raise DataError(
            f"data.path: {path} is not a dataset: it has no {STATE_FILE} (a dataset saved with "
            f"save_to_disk) and no {', '.join(TABLE_SUFFIXES)} files")
    else:
        files = file_names([path], "data.path", TABLE_SUFFIXES)
    documents = [d for file, name in files.items() for d in _read(file, name, text_column)
                 if d.text]
    return Corpus(documents, list(files.values()))


def _saved_files(root: Path) -> list[str]:
    """The Arrow files of a Dataset that save_to_disk wrote in `root`, in order."""
    try:
        state = json.loads((root / STATE_FILE).read_text("utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise DataError(f"data.path: {root / STATE_FILE} is not a save_to_disk state file "
                        "(no _data_files list of filenames)") from None
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise DataError(f"data.path: {root} lacks {missing[0]}, named in its {STATE_FILE}")
    return names


def _read(path: str, name: str, column: str) -> Iterator[Document]:
    """The documents of one file: a row's (or JSON line's) `column`, named `name:row`."""
    if path.lower().endswith(".jsonl"):
        yield from _read_json_lines(path, name, column)
        return
    table = _read_table(path, column)
    for row, text in enumerate(table.column(0).to_pylist()):
        if text is not None:
            yield Document(f"{name}:{row}", text)


def _read_table(path: str, column: str) -> pa.Table:
    """`column` of a Parquet or Arrow stream file, as a one-column table of strings."""
    try:
        if path.lower().endswith(".parquet"):
            schema = pq.read_schema(path)
            _check_column(path, column, schema)
            return pq.read_table(path, columns=[column])
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            _check_column(path, column, reader.schema)
            return reader.read_all().select([column])
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"data.path: {path} is not readable as "
                        f"{'Parquet' if path.lower().endswith('.parquet') else 'Arrow'}: "
                        f"{str(e).splitlines()[0]}") from None


def _check_column(path: str, column: str, schema: pa.Schema) -> None:
    """Raise DataError unless `schema` has a string `column`; name the columns it has."""
    if column not in schema.names:
        raise DataError(f"data.text_column={column!r}: {path} has no such column; its columns: "
                        f"{', '.join(schema.names)}")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"data.text_column={column!r}: the column of {path} holds {kind}, "
                        "not text")


def _read_json_lines(path: str, name: str, column: str) -> Iterator[Document]:
    """A JSON Lines file's documents: each object's string `column`, named `name:line`."""
    for lineno, record in read_json_lines(path):
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object with a string "
                            f"{column!r} field (data.text_column)")
        if column not in record:
            raise DataError(f"data.text_column={column!r}: {path}:{lineno} has no such field; "
                            f"its fields: {', '.join(record)}")
        text = record[column]
        if text is None:
            continue
        if not isinstance(text, str):
            raise DataError(f"data.text_column={column!r}: {path}:{lineno} holds "
                            f"{type(text).__name__}, not text")
        yield Document(f"{name}:{lineno}", text)
