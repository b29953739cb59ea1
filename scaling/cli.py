"""Console entry points: Hydra parses and type-checks the config, we validate it, then hand over.

Errors a user can fix (a bad config value, missing data) print one paragraph naming the field
or path and exit with status 2, without a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scaling.config import (
    Config,
    ConfigError,
    register_configs,
    reject_unknown_keys,
    to_dict,
    validate,
)

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def fail(message: str) -> NoReturn:
    """End the command with a one-paragraph error and status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_config(cfg: DictConfig) -> Config:
    """Hydra's config as the typed, validated `Config`, or a clean exit naming the bad field."""
    try:
        reject_unknown_keys(cfg, Config)  # `+model.new_key=1` gets past Hydra's struct check
        config = validate(OmegaConf.to_object(cfg))
    except (ConfigError, OmegaConfBaseException) as error:
        fail(str(error))
    logging.getLogger("jax").setLevel(logging.WARNING)
    return config


def hydra_entry(task: Callable[[DictConfig], None]) -> None:
    """Run `task` under Hydra with this project's conf/ and schema (all console scripts)."""
    register_configs()
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(task)()


def _train_task(cfg: DictConfig) -> None:
    config = load_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    from scaling.data import DataError  # after validation: config errors come before JAX loads
    from scaling.record import write_summary
    from scaling.stages.pretrain import pretrain
    from scaling.train import ResumeError

    try:
        pretrain(config, run_dir)
    except DataError as error:
        write_summary(run_dir, {"status": "failed", "error": f"DataError: {error}",
                                "config": to_dict(config)})
        fail(str(error))
    except ResumeError as error:
        fail(str(error))


def train() -> None:
    """`scaling-train [overrides]`: one pretraining run (or a sweep of them with -m)."""
    hydra_entry(_train_task)
