"""`hydra/sweeper=study`: a study is a union of named grids, launched as one sweep.

A scaling study is never one cartesian product: Kaplan's needs an N × D grid, a depth-vs-width
set at fixed N, a batch-size set at fixed N, IsoFLOP budgets. Hydra's basic sweeper expands one
product per launch; this sweeper expands each grid of `hydra.sweeper.grids` (the basic sweeper's
`key: a,b,c` syntax) and launches them all as one batch, so the launcher shows progress and ETA
for the study as a whole and every run lands in the one sweep directory the report reads.

Command-line overrides apply to every grid: a plain value replaces the grid's values of that
key, a sweep (`train.seed=0,1`) multiplies every grid. Runs that two grids share (the same run
directory, which is a pure function of the config) are launched once.

Interpolations in a grid are written escaped, `train.tokens: \\${isoflop_tokens:}`: Hydra
resolves the sweeper's own config before the sweeper sees it, and these must resolve in each
run's config instead.

Every job's config is composed before any is launched, so a bad grid value stops the study at
once with one line naming the grid and the key (`hydra.sweeper.grids.nd: train.tokens: ...`).

A grid may start its runs from another grid's: `stage.init_from: grid:pretrain` names, for each
run, the run of grid `pretrain` that agrees with it on every key `pretrain` sweeps (a
transfer study's fine-tune of `model=n100k` starts from the pretraining run of `model=n100k`).
The value becomes that run's directory, and the launcher starts a run only once the run it
starts from has completed (`hydra/launcher=local` orders them; a run whose parent failed is
skipped with that reason).
"""

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scaling.console import UsageError, describe

log = logging.getLogger(__name__)


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.scaling_launcher.study_sweeper.StudySweeper"
    _recursive_: bool = False  # grids reach the sweeper unresolved (see StudySweeper)
    # grid name -> {config key -> value or comma-separated sweep}; a null grid is left out
    grids: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf,
                             provider="scaling")


def unescape(value: Any) -> str:
    """A grid value as an override string: `\\${...}` arrives escaped or not, depending on
    whether Hydra resolved the sweeper's config first (instantiating it) or not (compose)."""
    return str(value).replace("\\${", "${")


def expand_grids(grids: dict[str, dict[str, str] | None], arguments: Sequence[str],
                 parser: OverridesParser) -> list[tuple[str, list[str]]]:
    """Every (grid name, job overrides) of the study, grid by grid, in declaration order."""
    if not grids:
        raise UsageError("hydra.sweeper.grids is empty: a study needs at least one grid, e.g. "
                         "grids: {sizes: {model: 'n100k,n300k'}}")
    common = parser.parse_overrides(list(arguments))
    common_keys = {o.get_key_element() for o in common}
    jobs = []
    for name, grid in grids.items():
        if grid is None:
            continue
        if not isinstance(grid, dict) or not grid:
            raise UsageError(f"hydra.sweeper.grids.{name}={grid!r} is invalid: expected a "
                             "non-empty mapping of config keys to values or a,b,c sweeps")
        try:
            own = parser.parse_overrides([f"{key}={unescape(value)}"
                                          for key, value in grid.items()])
        except HydraException as error:
            raise UsageError(f"hydra.sweeper.grids.{name}: {describe(error)}") from error
        merged = [o for o in own if o.get_key_element() not in common_keys] + common
        (product,) = BasicSweeper.split_arguments(merged, None)
        jobs += [(name, overrides) for overrides in product]
    return jobs


PARENT_KEY = "stage.init_from"
GRID_PREFIX = "grid:"


def _values(overrides: Sequence[str]) -> dict[str, str]:
    """A job's overrides as {key: value} (each override is `key=value`)."""
    return dict(o.split("=", 1) for o in overrides)


def link_parents(jobs: list[tuple[str, list[str]]],
                 run_dir: Callable[[list[str]], str]) -> list[tuple[str, list[str]]]:
    """`jobs` with every `stage.init_from=grid:NAME` replaced by the directory (`run_dir` of
    its overrides) of the one run of grid NAME that agrees with the job on the keys NAME sweeps.

    Raises UsageError (one line) for an unknown grid, a job that does not set a key its parent
    grid sweeps, or no or several matching runs.
    """
    by_grid: dict[str, list[dict[str, str]]] = {}
    for grid, overrides in jobs:
        by_grid.setdefault(grid, []).append(_values(overrides))
    linked = []
    for grid, overrides in jobs:
        values = _values(overrides)
        wanted = re.sub(r"\\(.)", r"\1", values.get(PARENT_KEY, ""))  # Hydra escapes `:`
        if not wanted.startswith(GRID_PREFIX):
            linked.append((grid, overrides))
            continue
        name = wanted.removeprefix(GRID_PREFIX)
        where = f"hydra.sweeper.grids.{grid}: {PARENT_KEY}={wanted}"
        if name not in by_grid or name == grid:
            raise UsageError(f"{where} names no other grid of the study (grids: "
                             f"{', '.join(g for g in by_grid if g != grid)})")
        parents = by_grid[name]
        swept = sorted({k for p in parents for k in p if len({q.get(k) for q in parents}) > 1})
        unset = [k for k in swept if k not in values]
        if unset:
            raise UsageError(f"{where}: grid {name} sweeps {', '.join(unset)}, which this grid "
                             "does not set: each run must name the value of its parent's")
        matches = [p for p in parents if all(p.get(k) == values[k] for k in swept)]
        if len(matches) != 1:
            chosen = " ".join(f"{k}={values[k]}" for k in swept) or "these values"
            raise UsageError(f"{where}: {len(matches)} runs of grid {name} have {chosen}: "
                             "expected exactly one to start from")
        parent = [f"{k}={v}" for k, v in matches[0].items()]
        linked.append((grid, [o if not o.startswith(f"{PARENT_KEY}=") else
                              f"{PARENT_KEY}={run_dir(parent)}" for o in overrides]))
    return linked


class StudySweeper(Sweeper):
    def __init__(self, grids: DictConfig | dict[str, Any]) -> None:
        # Unresolved: `${isoflop_tokens:}` in a grid must resolve in each job's config, not here
        if isinstance(grids, DictConfig):
            grids = OmegaConf.to_container(grids, resolve=False)
        self.grids = grids or {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _run_dir(self, overrides: list[str]) -> str:
        job = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        return str(Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir))

    def _parent_dir(self, overrides: list[str]) -> str:
        try:
            return self._run_dir(overrides)
        except (HydraException, OmegaConfBaseException) as error:
            raise UsageError(f"hydra.sweeper.grids: {describe(error)}") from error

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        seen: dict[str, str] = {}
        jobs, per_grid = [], {}
        for grid, overrides in link_parents(expand_grids(self.grids, arguments, parser),
                                            self._parent_dir):
            try:  # compose every job before launching any: a bad value ends the study at once
                run_dir = self._run_dir(overrides)
            except (HydraException, OmegaConfBaseException) as error:
                raise UsageError(f"hydra.sweeper.grids.{grid}: {describe(error)}") from error
            per_grid[grid] = per_grid.get(grid, 0) + 1
            if run_dir in seen:
                log.info("grid %s: %s is also in grid %s; launched once", grid,
                         Path(run_dir).name, seen[run_dir])
                continue
            seen[run_dir] = grid
            jobs.append(overrides)
        log.info("Study of %d runs: %s", len(jobs),
                 ", ".join(f"{grid} {count}" for grid, count in per_grid.items()))

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        results = self.launcher.launch(jobs, initial_job_idx=0)
        for result in results:
            _ = result.return_value  # raises for a failed run, after all have been attempted
        return [results]
