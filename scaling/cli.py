"""Console entry points: Hydra parses and type-checks the config, we validate it, then hand over.

Errors a user can fix (a bad config value, missing data) print one paragraph naming the field
or path and exit with status 2, without a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

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


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _train_task(cfg: DictConfig) -> None:
    try:
        reject_unknown_keys(cfg, Config)  # `+model.new_key=1` gets past Hydra's struct check
        config: Config = validate(OmegaConf.to_object(cfg))
    except (ConfigError, OmegaConfBaseException) as error:
        _fail(str(error))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    logging.getLogger("jax").setLevel(logging.WARNING)

    from scaling.data import DataError  # after validation: config errors come before JAX loads
    from scaling.record import write_summary
    from scaling.stages.pretrain import pretrain
    from scaling.train import ResumeError

    try:
        pretrain(config, run_dir)
    except DataError as error:
        write_summary(run_dir, {"status": "failed", "error": f"DataError: {error}",
                                "config": to_dict(config)})
        _fail(str(error))
    except ResumeError as error:
        _fail(str(error))


def train() -> None:
    """`scaling-train [overrides]`: one pretraining run (or a sweep of them with -m)."""
    register_configs()
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(_train_task)()
