"""`hydra/launcher=local`: each run of a sweep in its own process, several at a time.

One process per run because JAX's XLA flags and GPU memory are per process. With GPUs, runs
take them round-robin (one GPU per run while there are enough; otherwise runs share a GPU
and each gets an equal fraction of its memory). A run that fails does not stop the others;
the sweep ends by listing every failed run with its error, and a re-launch trains them again.

A run whose directory already holds a completed record of the same config and corpus is
skipped without starting a process (importing JAX costs seconds, and a re-launched study may
hold hundreds). The corpus is checked here, not left to the run's process: reading and hashing
it takes a fraction of a JAX import, and is done once per data config of the sweep. A run whose
corpus changed since it completed is launched, and its process refuses it, or trains it again
where SCALING_RESTART_ON_DATA_CHANGE=1 asks to.

Progress lines weight the ETA by each run's planned FLOPs: a study's runs differ in cost by
orders of magnitude, so counting runs would mislead.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from scaling.data.errors import DataError
from scaling.record import completed_same_config, read_summary, record_name, tokenizer_cache
from scaling.sweep import (
    IDENTITY_GROUPS,
    canonical_path,
    corpus_fingerprint,
    flatten,
    planned_flops,
)

log = logging.getLogger(__name__)
LOG = "launcher.log"  # each run's output, in its directory


@dataclass
class LocalLauncherConf:
    _target_: str = "hydra_plugins.scaling_launcher.local_launcher.LocalLauncher"
    n_jobs: int = 2  # runs at once
    gpus: list[int] | None = None  # GPU ids to spread runs over; None: all that nvidia-smi lists
    memory_fraction: float = 0.9  # of each GPU, split between the runs that share it


ConfigStore.instance().store(group="hydra/launcher", name="local", node=LocalLauncherConf,
                             provider="scaling")


def visible_gpus() -> list[int]:
    """GPU ids this machine offers, without initialising CUDA in the launcher process."""
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return [int(i) for i in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if i.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [i for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU")]


def slot_env(slot: int, n_jobs: int, gpus: list[int], memory_fraction: float) -> dict[str, str]:
    """Environment for the run in `slot`: its GPU, and its share of GPU memory if shared."""
    if not gpus:
        return {}
    env = {"CUDA_VISIBLE_DEVICES": str(gpus[slot % len(gpus)])}
    runs_per_gpu = -(-n_jobs // len(gpus))
    if runs_per_gpu > 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{memory_fraction / runs_per_gpu:.3f}"
    return env


class LocalLauncher(Launcher):
    def __init__(self, n_jobs: int = 2, gpus: list[int] | None = None,
                 memory_fraction: float = 0.9) -> None:
        if n_jobs < 1:
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs} is invalid: expected >= 1")
        self.n_jobs = n_jobs
        self.gpus = list(gpus) if gpus is not None else None
        self.memory_fraction = memory_fraction
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def _command(self, overrides: Sequence[str], run_dir: Path) -> list[str]:
        """The same program, primary config and overrides, as a single run in `run_dir`."""
        hydra_cfg = self.config.hydra
        # The program as this process was started (a script, `-m module` or `-c code`), with
        # its own arguments dropped: they come back as this job's overrides.
        program = sys.orig_argv[1:len(sys.orig_argv) - len(sys.argv) + 1]
        args = [sys.executable, *program, "--config-name", hydra_cfg.job.config_name]
        for source in hydra_cfg.runtime.config_sources:
            if source.provider == "command-line":
                args += ["--config-dir", source.path.removeprefix("file://")]
        overrides = [o for o in overrides if not o.startswith("hydra.sweep.")]
        # A single run, even where the primary config is a sweep preset (hydra.mode: MULTIRUN)
        return [*args, *overrides, "hydra.mode=RUN", f"hydra.run.dir={run_dir}"]

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        jobs = []
        for offset, overrides in enumerate(job_overrides):
            job_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides))
            with open_dict(job_config):
                job_config.hydra.job.id = job_config.hydra.job.num = initial_job_idx + offset
            run_dir = Path(str(job_config.hydra.sweep.dir)) / str(job_config.hydra.sweep.subdir)
            jobs.append((list(overrides), job_config, run_dir))
        fingerprints: dict[str, str | None] = {}
        results = {i: _job_return(overrides, job_config, run_dir, 0)
                   for i, (overrides, job_config, run_dir) in enumerate(jobs)
                   if completed(job_config, run_dir, fingerprints)}
        log.info("Launching %d runs (%d already completed), %d at a time, %s",
                 len(jobs) - len(results), len(results), self.n_jobs,
                 f"on GPUs {gpus}" if gpus else "on the CPU")
        running: dict[int, tuple[subprocess.Popen, Any, int, float, int]] = {}
        try:
            return self._run_all(jobs, gpus, results, running)
        except KeyboardInterrupt:
            _stop(running)

    def _run_all(self, jobs: list, gpus: list[int], results: dict[int, JobReturn],
                 running: dict[int, tuple[subprocess.Popen, Any, int, float, int]],
                 ) -> list[JobReturn]:
        free_slots = list(range(self.n_jobs))

        failed: list[tuple[Path, str]] = []
        queue = [(i, job) for i, job in enumerate(jobs) if i not in results]
        cost = {i: float(planned_flops(job_config)) for i, (_, job_config, _) in queue}
        parents = parent_jobs(jobs)
        done_cost, total = 0.0, len(queue)
        started = time.monotonic()

        def finish(index: int, returncode: int, error: str | None, seconds: float) -> None:
            nonlocal done_cost
            overrides, job_config, run_dir = jobs[index]
            if error:
                failed.append((run_dir, error))
            results[index] = _job_return(overrides, job_config, run_dir, returncode, error)
            done_cost += cost.pop(index)
            done = total - len(queue) - len(running)
            elapsed = time.monotonic() - started
            eta = elapsed * sum(cost.values()) / max(done_cost, 1.0)
            log.info("[%d/%d] %s %s in %.0fs (elapsed %.0fs, ETA %.0fs)", done, total,
                     run_dir.name, f"FAILED ({error})" if error else "ok", seconds, elapsed, eta)

        while queue or running:
            while free_slots:
                # The first queued run whose linked runs (stage.init_from, ...) have finished
                ready = next((k for k, (i, _) in enumerate(queue)
                              if all(j in results for _, j in parents.get(i, []))), None)
                if ready is None:
                    break
                index, (overrides, job_config, run_dir) = queue.pop(ready)
                failed_links = [(key, j) for key, j in parents.get(index, [])
                                if results[j].status != JobStatus.COMPLETED]
                if failed_links:
                    key, parent = failed_links[0]
                    finish(index, 1, f"skipped: the run its {key} names, {jobs[parent][2].name}, "
                                     "failed", 0.0)
                    continue
                slot = free_slots.pop(0)
                run_dir.mkdir(parents=True, exist_ok=True)
                env = {**os.environ, **slot_env(slot, self.n_jobs, gpus, self.memory_fraction)}
                with open(run_dir / LOG, "ab") as out:
                    logged = out.seek(0, os.SEEK_END)  # where this attempt's output starts
                    process = subprocess.Popen(self._command(overrides, run_dir), env=env,
                                               stdout=out, stderr=subprocess.STDOUT)
                running[index] = (process, job_config, slot, time.monotonic(), logged)
            time.sleep(0.05)
            for index, (process, _, slot, t0, logged) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[index]
                free_slots.append(slot)
                run_dir = jobs[index][2]
                error = None if process.returncode == 0 else _error(process.returncode,
                                                                     run_dir / LOG, logged)
                finish(index, process.returncode, error, time.monotonic() - t0)
        if failed:
            log.error("%d of %d runs failed (each one's log is launcher.log in its directory; "
                      "launching the sweep again retries them):%s", len(failed), len(jobs),
                      "".join(f"\n  {run_dir}: {error}" for run_dir, error in failed))
        return [results[i] for i in range(len(jobs))]


def parent_jobs(jobs: list[tuple[list[str], DictConfig, Path]]) -> dict[int, list[tuple[str, int]]]:
    """{job index: [(key, index of the job it links to), ...]}: every config value of a job
    (`stage.init_from`, `stage.reward_from`, `data.policy`, an entry of `data.paths`, ...) that
    is another job's run directory, compared as canonical paths. Those jobs must finish first."""
    by_dir = {canonical_path(str(run_dir)): i for i, (_, _, run_dir) in enumerate(jobs)}
    parents: dict[int, list[tuple[str, int]]] = {}
    for i, (_, job_config, _) in enumerate(jobs):
        config = {k: OmegaConf.to_container(job_config[k], resolve=True)
                  for k in IDENTITY_GROUPS if k in job_config}
        for key, value in flatten(config).items():
            for path in value if isinstance(value, list) else [value]:
                if isinstance(path, str) and path and "\n" not in path:
                    j = by_dir.get(canonical_path(path))
                    if j is not None and j != i:
                        parents.setdefault(i, []).append((key, j))
    return parents


def _stop(running: dict[int, tuple[subprocess.Popen, Any, int, float, int]]) -> NoReturn:
    """Ctrl-C: let the running runs checkpoint, say how to resume, and end the sweep.

    A terminal's Ctrl-C reaches the runs too (one process group); SIGTERM, which a run takes
    once however often it comes, reaches those that a `kill -INT` of the launcher alone left
    out. Each run finishes its step, checkpoints and records itself interrupted.
    """
    for process, *_ in running.values():
        process.send_signal(signal.SIGTERM)
    for process, *_ in running.values():
        process.wait()
    print(f"{Path(sys.argv[0]).name}: sweep interrupted; the {len(running)} running runs "
          "stopped, each with a checkpoint of the step it reached; run the same command to "
          "resume", file=sys.stderr, flush=True)
    sys.exit(128 + signal.SIGINT)


def completed(job_config: DictConfig, run_dir: Path,
              fingerprints: dict[str, str | None] | None = None) -> bool:
    """Whether `run_dir` holds a completed record of this very config and corpus (a run's
    summary.json, the replicas.json of a group of replicas, `train.replicas`, or the
    branches.json of a WSD trunk, `train.cooldowns`, whose branches have all completed).

    The corpus is read and hashed (`corpus_fingerprint`) to compare with the record's
    `corpus_cache`, a fine-tune's with its parent's tokenizer; `fingerprints` keeps each
    hash over a launch, so that a sweep reads each corpus once. A corpus that cannot be read
    leaves the run to its process, which says what is wrong; so does an SFT run (pairs).
    """
    config = {k: OmegaConf.to_container(job_config[k], resolve=True)
              for k in IDENTITY_GROUPS if k in job_config}
    summary = completed_same_config(run_dir, config, record_name(job_config.train))
    if summary is None:
        return False
    tokenizer_from = None
    if job_config.stage.kind == "finetune":  # its corpus in the tokens of its parent's tokenizer
        parent = read_summary(Path(str(job_config.stage.init_from)))
        tokenizer_from = tokenizer_cache(parent) if parent else None
        if tokenizer_from is None:
            return False
    elif job_config.stage.kind != "pretrain":
        return False  # pairs, not a corpus (sft): only its process can check them
    # A record from before fingerprints (a group's, at first) cannot be checked: kept.
    recorded = summary.get("corpus_cache")
    memo = fingerprints if fingerprints is not None else {}
    return recorded is None or recorded == _fingerprint(job_config.data, tokenizer_from, memo)


def _fingerprint(data: DictConfig, tokenizer_from: str | None,
                 fingerprints: dict[str, str | None]) -> str | None:
    """The corpus fingerprint of `data` (encoded with `tokenizer_from`'s tokenizer, if given),
    None where its corpus cannot be read; memoised in `fingerprints`."""
    key = json.dumps([OmegaConf.to_container(data, resolve=True), tokenizer_from], sort_keys=True)
    if key not in fingerprints:
        try:
            fingerprints[key] = corpus_fingerprint(OmegaConf.to_object(data), tokenizer_from)
        except (DataError, OSError):
            fingerprints[key] = None
    return fingerprints[key]


def _error(returncode: int, log_path: Path, offset: int) -> str:
    """What a failed run's process said last (its error: `fail`'s one line, or the last line
    of a traceback), from its log past `offset` (this attempt's output), with how it ended."""
    ended = f"exit {returncode}" if returncode > 0 else f"killed by signal {-returncode}"
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    return f"{ended}: {last[:300]}"


def _job_return(overrides: list[str], job_config: DictConfig, run_dir: Path,
                returncode: int, error: str | None = None) -> JobReturn:
    ret = JobReturn(overrides=overrides, cfg=job_config, hydra_cfg=None, working_dir=str(run_dir),
                    task_name=str(job_config.hydra.job.name))
    if returncode == 0:
        ret.status = JobStatus.COMPLETED
        ret._return_value = None
    else:
        ret.status = JobStatus.FAILED
        # Compact: Hydra prints the first failed run's message alone, without a traceback.
        ret._return_value = CompactHydraException(
            f"run {run_dir} failed ({error}); its log is {run_dir / LOG}: "
            f"{' '.join(filter_overrides(overrides))}")
    return ret
