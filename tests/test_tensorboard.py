"""train.loggers=[tensorboard]: each run's evaluations and hparams as TensorBoard events."""

import struct
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from tensorboardX.proto.event_pb2 import Event

from scaling.config import ConfigError, to_dict, validate
from scaling.sweep import run_id
from scaling.tensorboard import EVENTS_DIR
from tests.runs import pretrain


def read_events(directory: Path) -> list[Event]:
    """Every event of the event files in `directory` (TFRecord: length, crc, data, crc)."""
    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def scalars(events: list[Event]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for event in events:
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_a_run_writes_its_evaluations_and_hparams(tmp_path, tiny_config):
    summary = pretrain(tiny_config(), tmp_path / "run")
    assert summary["status"] == "completed"
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    events = read_events(tmp_path / "run" / EVENTS_DIR)
    logged = scalars(events)
    for column, tag in (("val_loss", "loss/val"), ("train_loss", "loss/train"), ("lr", "lr"),
                        ("grad_norm", "grad_norm"), ("tokens_per_s", "tokens_per_s")):
        recorded = metrics.dropna(subset=[column])  # tokens/s has no rate at the first step
        assert logged[tag] == pytest.approx(dict(zip(recorded["step"], recorded[column],
                                                     strict=True)), rel=1e-6)
    assert logged["hparam/final_val_loss"] == pytest.approx(
        {int(metrics["step"].iloc[-1]): summary["final_val_loss"]}, rel=1e-6)
    plugins = {v.metadata.plugin_data.plugin_name for e in events for v in e.summary.value
               if v.HasField("metadata")}
    assert "hparams" in plugins


def test_no_loggers_write_nothing_and_keep_the_run_id(tmp_path, tiny_config):
    config = tiny_config()
    quiet = replace(config, train=replace(config.train, loggers=[]))
    assert run_id(to_dict(quiet)) == run_id(to_dict(config))
    pretrain(quiet, tmp_path / "run")
    assert not (tmp_path / "run" / EVENTS_DIR).exists()
    with pytest.raises(ConfigError, match=r"train\.loggers"):
        validate(replace(config, train=replace(config.train, loggers=["wandb"])))
