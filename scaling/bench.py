"""`scaling-bench [overrides]`: the trainer's own step, timed on real batches; one JSON line.

Takes exactly `scaling-train`'s overrides and builds the run as it does (`prepare`, `setup`),
then runs WARMUP_STEPS steps (the first one compiles: `compile_s` is its wall time) and
TIMED_STEPS steps between two device syncs, each on its batch gathered from the token shards
as in training. It prints `tokens_per_s`, `step_ms`, `mfu` (with its formula; null where the
device has no known bf16 peak), `flops_per_token`, `n_params`, `vocab_size`, `device`,
`compile_s` and `peak_mem_gb` (device memory; null on CPUs, which do not report it), with the
settings that produced them. With `train.replicas=K` it times the K models' vmapped step:
`tokens_per_s` and `mfu` count all K models together (`replicas` says how many). It writes no
run record.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from scaling.cli import fail, hydra_entry, load_config
from scaling.config import Config, ConfigError

if TYPE_CHECKING:
    import jax

WARMUP_STEPS = 5
TIMED_STEPS = 30


def _peak_mem_gb(devices: list[jax.Device]) -> float | None:
    stats = [d.memory_stats() for d in devices]
    if any(s is None or "peak_bytes_in_use" not in s for s in stats):
        return None
    return max(s["peak_bytes_in_use"] for s in stats) / 1e9


def bench(cfg: Config, warmup: int = WARMUP_STEPS, steps: int = TIMED_STEPS) -> dict[str, Any]:
    """Time `steps` training steps of `cfg` after `warmup` (at least 1) untimed ones."""
    import jax
    import numpy as np

    from scaling.flops import MFU_FORMULA, mfu
    from scaling.stages import prepare
    from scaling.train import models_batch, setup_models

    warmup = max(warmup, 1)
    run = prepare(cfg)
    replicas, stage = run.replicas, run.replicas[0].stage
    placement, state, train_step = setup_models(replicas, cfg.train)

    started = time.perf_counter()
    state, metrics = train_step(state, placement.batch(models_batch(replicas, 0)))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - started
    for step in range(1, warmup):
        state, metrics = train_step(state, placement.batch(models_batch(replicas, step)))
    jax.block_until_ready((state, metrics))

    started = time.perf_counter()
    for step in range(warmup, warmup + steps):
        state, metrics = train_step(state, placement.batch(models_batch(replicas, step)))
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - started

    tokens_per_s = steps * len(replicas) * stage.tokens_per_step / seconds  # all replicas
    m, t = cfg.model, cfg.train
    return {
        "tokens_per_s": tokens_per_s,
        "step_ms": seconds / steps * 1e3,
        "mfu": mfu(tokens_per_s, stage.flops_per_token, placement.devices),
        "mfu_formula": MFU_FORMULA,
        "flops_per_token": stage.flops_per_token,
        "n_params": stage.record["n_params"],
        "n_params_nonembed": stage.record["n_params_nonembed"],
        "vocab_size": stage.record["vocab_size"],
        "device": placement.devices[0].device_kind,
        "n_devices": len(placement.devices),
        "compile_s": compile_s,
        "peak_mem_gb": _peak_mem_gb(placement.devices),
        "loss": float(np.mean(metrics["loss"])),  # the replicas' mean
        "n_layer": m.n_layer, "d_model": m.d_model, "n_head": m.n_head, "n_ctx": m.n_ctx,
        "batch_size": t.batch_size, "dtype": stage.record["dtype"],
        "attention": stage.record["attention"], "remat": m.remat, "scan_layers": m.scan_layers,
        "grad_accum": t.grad_accum, "parallel": t.parallel, "replicas": len(replicas),
        "warmup_steps": warmup, "timed_steps": steps,
    }


def _bench_task(cfg: DictConfig) -> None:
    config = load_config(cfg)
    from scaling.data import DataError  # after validation: config errors come before JAX loads

    try:
        result = bench(config)
    except (ConfigError, DataError) as error:
        fail(str(error))
    print(json.dumps(result), flush=True)


ABOUT = f"""scaling-bench [KEY=VALUE ...]: time the trainer's own step, trains nothing.
Builds the run that scaling-train would (same keys, same data, model, optimizer and jitted
step), runs {WARMUP_STEPS} warm-up and {TIMED_STEPS} timed steps on real batches and prints one JSON
line: tokens_per_s, step_ms, mfu (with its formula), compile_s, peak_mem_gb, flops_per_token,
n_params, the device and the settings. Writes no run record."""

# Hydra's own files (.hydra/, the log) go under runs/bench/, not into the directory where
# scaling-train would train the same config; an explicit override still wins.
HYDRA_DEFAULTS = ("hydra.run.dir=runs/bench/${run_id:}", "hydra.job.name=bench")


def main() -> None:
    """`scaling-bench [overrides]`: one JSON line on stdout (after Hydra's log lines)."""
    given = {arg.split("=", 1)[0] for arg in sys.argv[1:]}
    sys.argv[1:1] = [arg for arg in HYDRA_DEFAULTS if arg.split("=", 1)[0] not in given]
    hydra_entry(_bench_task, ABOUT)
