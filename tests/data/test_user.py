"""data=hf: a user's dataset on disk (save_to_disk, Parquet, JSON Lines) read offline, trained
on, and refused in one line when it is not a dataset or lacks the text column."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scaling.config import ConfigError, DataConfig, to_dict, validate
from scaling.data.errors import DataError
from scaling.data.sources import read_corpus
from scaling.sweep import run_id
from tests.runs import pretrain

TEXTS = [f"def f{i}(x):\n    return x * {i} + 1  # row {i}, 吾輩は猫である\n" * 8
         for i in range(24)]


def save_to_disk(directory: Path, columns: dict[str, list]) -> Path:
    """What `datasets.Dataset.from_dict(columns).save_to_disk(directory)` writes: an Arrow stream
    file, its features in dataset_info.json, and state.json naming the file."""
    directory.mkdir(parents=True)
    table = pa.table(columns)
    with pa.OSFile(str(directory / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    features = {name: {"dtype": "string" if pa.types.is_string(table.schema.field(name).type)
                       else "int64", "_type": "Value"} for name in columns}
    (directory / "dataset_info.json").write_text(json.dumps({"features": features}))
    (directory / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0" * 16,
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
        "_output_all_columns": False, "_split": None}))
    return directory


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """The same rows as a save_to_disk directory, a Parquet file and a JSON Lines file."""
    root = tmp_path_factory.mktemp("user")
    ids = list(range(len(TEXTS)))
    pq.write_table(pa.table({"id": ids, "content": TEXTS}), root / "rows.parquet")
    (root / "jsonl").mkdir()
    (root / "jsonl" / "rows.jsonl").write_text(
        "".join(json.dumps({"id": i, "content": t}) + "\n" for i, t in enumerate(TEXTS)))
    return {"saved": save_to_disk(root / "saved", {"id": ids, "content": TEXTS}),
            "parquet": root / "rows.parquet", "jsonl": root / "jsonl"}


@pytest.mark.parametrize("kind", ["saved", "parquet", "jsonl"])
def test_each_layout_trains_on_its_text_column(kind, datasets, tiny_config, tmp_path):
    corpus = read_corpus("hf", [], path=str(datasets[kind]), text_column="content")
    assert sorted(d.text for d in corpus.documents) == sorted(TEXTS)
    config = tiny_config(tokens=8_000, eval_count=2)
    config = replace(config, data=replace(config.data, source="hf", paths=[],
                                          path=str(datasets[kind]), text_column="content"))
    summary = pretrain(validate(config), tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["corpus_cache"].startswith("hf-bpe512-")


def test_documents_are_named_by_file_and_row(datasets):
    saved = read_corpus("hf", [], path=str(datasets["saved"]), text_column="content")
    lines = read_corpus("hf", [], path=str(datasets["jsonl"]), text_column="content")
    assert saved.documents[0].name == "data-00000-of-00001.arrow:0"
    assert lines.documents[0].name == "rows.jsonl:1"  # a line number, as data=files names them
    assert saved.files == ["data-00000-of-00001.arrow"]


@pytest.mark.parametrize(
    ("kind", "column", "message"),
    [("saved", "text", "data.text_column='text': {}/data-00000-of-00001.arrow has no such "
                       "column; its columns: id, content"),
     ("parquet", "text", "data.text_column='text': {} has no such column; its columns: id, "
                         "content"),
     ("jsonl", "text", "data.text_column='text': {}/rows.jsonl:1 has no such field; its fields: "
                       "id, content"),
     ("parquet", "id", "data.text_column='id': the column of {} holds int64, not text")],
)
def test_a_missing_or_wrong_column_is_named_with_those_there(kind, column, message, datasets):
    with pytest.raises(DataError) as error:
        read_corpus("hf", [], path=str(datasets[kind]), text_column=column)
    assert str(error.value) == message.format(datasets[kind])


def test_what_is_not_a_dataset_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("text, but no table")
    (tmp_path / "dict").mkdir()
    (tmp_path / "dict" / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    empty = save_to_disk(tmp_path / "empty", {"text": pa.array([], pa.string())})
    cases = {tmp_path / "nosuch": "no such file or directory",
             tmp_path / "notes": "is not a dataset: it has no state.json",
             tmp_path / "dict": f"point data.path at one split, e.g. {tmp_path}/dict/train",
             empty: "the corpus is empty: 1 files in data.path="}
    for path, message in cases.items():
        with pytest.raises(DataError) as error:
            read_corpus("hf", [], path=str(path))
        assert message in str(error.value) and "\n" not in str(error.value)


def test_the_config_names_data_path_and_keeps_earlier_run_ids(tiny_config):
    config = tiny_config()
    with pytest.raises(ConfigError, match=r"^data.path=None is invalid"):
        validate(replace(config, data=replace(config.data, source="hf", paths=[])))
    with pytest.raises(ConfigError, match=r"^data.path='d' is invalid: expected null with "
                                          r"data=files"):
        validate(replace(config, data=replace(config.data, path="d")))
    recorded = to_dict(config)
    for key in ("path", "text_column"):
        del recorded["data"][key]  # a run recorded before data=hf existed
    assert run_id(recorded) == run_id(to_dict(config))
    assert DataConfig().text_column == "text"


def test_scaling_train_refuses_a_missing_dataset_in_one_line(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "scaling-train"), "data=hf", "data.path=nosuch",
         f"hydra.run.dir={tmp_path}/run", f"data.cache_dir={tmp_path}/cache",
         "train.loggers=[]"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"scaling-train: error: data.path: no such file or directory: {tmp_path}/nosuch"]
