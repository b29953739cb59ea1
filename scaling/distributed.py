"""Training across processes: JAX's multi-controller runtime, joined from Slurm's environment or
from `train.distributed`, and which process does what once it runs.

Every process runs the same program (JAX's multi-controller model). One mesh spans the devices
of all of them (`scaling.parallel`); each process computes the (seed, step) batch, a pure
function of the step, and puts only its own rows of it on its own devices, so the global batch,
and the losses, are a one-process run's. Every process takes part in each step, evaluation and
checkpoint (Orbax saves and restores across processes); what one process sees alone (a stop
signal, its checkpoint clock running out) is made a decision of all at the same step
(`max_over_processes`). Only process 0 writes the run's record
(`scaling.record`), its live logs and its progress; the others log warnings and errors only.
docs/distributed.md shows how to launch it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from scaling.config import DistributedConfig
from scaling.console import UsageError, one_line

log = logging.getLogger("scaling")
# The tasks srun started for this job step: more than one is a multi-process run. Only srun sets
# it, so a batch script's own Python (one task of an sbatch --ntasks=N job) trains alone.
SLURM_STEP_TASKS = "SLURM_STEP_NUM_TASKS"


class DistributedError(UsageError):
    """This process could not join the others (an unreachable coordinator, missing settings)."""


def wanted(cfg: DistributedConfig, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process should join others: always for enabled=true, never for false; for
    auto, where train.distributed.num_processes > 1 or, that being null, where srun started
    several tasks (`SLURM_STEP_TASKS` in `environ`)."""
    if cfg.mode != "auto":
        return cfg.mode == "true"
    if cfg.num_processes is not None:
        return cfg.num_processes > 1
    return int(environ.get(SLURM_STEP_TASKS, "1")) > 1


def initialize(cfg: DistributedConfig) -> None:
    """Join the run's other processes (`jax.distributed.initialize`) where `wanted`, with the
    settings `cfg` gives and the rest detected from Slurm's environment by JAX; then quiet every
    process but 0. Call it before anything touches JAX's devices. Does nothing where JAX is
    joined already. Raises DistributedError, in one line, where JAX cannot join them."""
    if not wanted(cfg) or jax.distributed.is_initialized():
        return
    # CPU devices of different processes reach each other only through a collectives library:
    # gloo is JAX's default since 0.5, not in the 0.4 releases pyproject.toml still allows.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
            process_id=cfg.process_id, local_device_ids=cfg.local_device_ids)
    except (RuntimeError, ValueError, TypeError) as error:
        raise DistributedError(
            f"train.distributed: this process could not join the others ({one_line(str(error))}); "
            "set train.distributed.coordinator_address, num_processes and process_id, or "
            "launch with srun") from error
    if not is_primary():
        log.setLevel(logging.WARNING)
    log.info("joined %d processes: %d devices in all, %d of them this process's",
             jax.process_count(), jax.device_count(), jax.local_device_count())


def process_index() -> int:
    """This process's rank: 0 unless it joined others (asked without starting JAX's devices)."""
    return jax.process_index() if jax.distributed.is_initialized() else 0


def is_primary() -> bool:
    """Whether this process writes the run's record, logs and progress: process 0 of a
    multi-process run, and every single-process run."""
    return process_index() == 0


def max_over_processes(values: Sequence[int]) -> np.ndarray:
    """Each of `values`' maximum over the run's processes [len(values)], int32: what each
    process saw alone (a signal), made one decision for all. A collective: every process calls
    it at the same point of its program with as many values, and it waits for the steps
    already dispatched. In a one-process run the values themselves, with no device work."""
    local = np.asarray(values, dtype=np.int32)
    if jax.process_count() == 1:
        return local
    return multihost_utils.process_allgather(local).max(axis=0)
