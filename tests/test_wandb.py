"""train.loggers=[wandb]: optional, so without the package it is one line saying how to get it."""

import importlib.util
from dataclasses import replace

import pytest

from scaling.config import ConfigError, validate


def test_wandb_missing_is_one_line_saying_how_to_install_it(monkeypatch, tiny_config):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    config = tiny_config()
    with pytest.raises(ConfigError) as error:
        validate(replace(config, train=replace(config.train, loggers=["tensorboard", "wandb"])))
    message = str(error.value)
    assert message.startswith("train.loggers=[wandb] needs the optional package wandb")
    assert "pip install wandb" in message and "\n" not in message


def test_an_unknown_logger_names_the_choices(tiny_config):
    config = tiny_config()
    with pytest.raises(ConfigError, match=r"expected a list of tensorboard, wandb, or \[\]"):
        validate(replace(config, train=replace(config.train, loggers=["mlflow"])))
