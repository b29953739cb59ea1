"""Console entry points: Hydra parses and type-checks the config, we validate it, then hand over.

Errors a user can fix (a bad config value, missing data) print one paragraph naming the field
or path and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
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
    is_replica_group,
    register_configs,
    reject_unknown_keys,
    to_dict,
    validate,
)
from scaling.sweep import exclusive_run, register_resolvers

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
    register_resolvers()
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(task)()


def _train_task(cfg: DictConfig) -> None:
    config = load_config(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)

    from scaling.data import DataError  # after validation: config errors come before JAX loads
    from scaling.record import write_replicas, write_summary
    from scaling.stages.pretrain import pretrain, pretrain_replicas
    from scaling.train import ResumeError

    with exclusive_run(run_dir) as ours:
        if not ours:
            logging.getLogger("scaling").warning("%s is being trained by another process; "
                                                 "skipped", run_dir)
            return
        group = is_replica_group(config.train)  # records its models beside run_dir
        try:
            if group:
                pretrain_replicas(config, run_dir)
            else:
                pretrain(config, run_dir)
        except DataError as error:
            failed = {"status": "failed", "error": f"DataError: {error}",
                      "config": to_dict(config)}
            (write_replicas if group else write_summary)(run_dir, failed)
            fail(str(error))
        except (ConfigError, ResumeError) as error:  # e.g. a batch the devices cannot split
            fail(str(error))


def train() -> None:
    """`scaling-train [overrides]`: one pretraining run (or a sweep of them with -m)."""
    hydra_entry(_train_task)


def report(argv: list[str] | None = None) -> None:
    """`scaling-report SWEEP_DIR`: gather every run below SWEEP_DIR into results.parquet and
    curves.parquet, and write SWEEP_DIR/report/ (index.html and plots)."""
    parser = argparse.ArgumentParser(prog="scaling-report", description=report.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--bootstrap", type=int, default=0, metavar="K",
                        help="bootstrap resamples for the fits' intervals (default: none)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        fail(f"{args.sweep_dir} is not a directory")

    from analysis.kaplan import write_kaplan_report
    from analysis.overview import write_report
    from analysis.report import write_fits
    from scaling.results import write_tables

    collected = write_tables(args.sweep_dir)
    for problem in collected.problems:
        print(f"skipped {problem}", file=sys.stderr)
    if collected.results.empty:
        fail(f"no run records (summary.json) below {args.sweep_dir}")
    results, curves = collected.results, collected.curves
    completed = results[results["status"] == "completed"]
    report_dir = args.sweep_dir / "report"
    fits = write_fits(
        completed, report_dir, curves=curves[curves["run_id"].isin(completed["run_id"])],
        columns={"run": "run_id"},
        curve_columns={"run": "run_id", "S": "step", "D": "tokens", "C": "flops",
                       "loss": "val_loss"},
        n_bootstrap=args.bootstrap,
    )
    kaplan, kaplan_fits = write_kaplan_report(
        results, curves, report_dir, n_bootstrap=args.bootstrap,
        positions=collected.positions if not collected.positions.empty else None)
    fits_json = report_dir / "fits.json"
    every_fit = {**json.loads(fits_json.read_text()), **kaplan_fits}
    fits_json.write_text(json.dumps(every_fit, indent=2, allow_nan=False))
    index = write_report(results, curves, report_dir, title=f"Sweep {args.sweep_dir.name}",
                         problems=collected.problems, sections=[kaplan, fits])
    counts = collected.results["status"].value_counts().to_dict()
    print(f"{len(collected.results)} runs ({', '.join(f'{v} {k}' for k, v in counts.items())}) "
          f"-> {args.sweep_dir / 'results.parquet'}, {index}")
