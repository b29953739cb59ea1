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

A grid may link its runs to another grid's, on any key whose value is a run directory:
`stage.init_from: grid:pretrain` names, for each run, the run of grid `pretrain` that agrees
with it on every key `pretrain` sweeps (a transfer study's fine-tune of `model=n100k` starts
from the pretraining run of `model=n100k`); `data.policy: grid:policy` the one run of a grid
that sweeps nothing. `grid:NAME/*` fans out: one run of this grid per run of grid NAME
(`stage.reward_from: grid:rm/*`, PPO against every reward model, whatever its size). The
value becomes that run's directory (`link_parents`), and the launcher starts a run only once
every run it links to has completed (`hydra/launcher=local` orders them; a run whose linked
run failed is skipped with that reason).
"""

import itertools
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


GRID_PREFIX = "grid:"
FAN_OUT = "/*"


def _values(overrides: Sequence[str]) -> dict[str, str]:
    """A job's overrides as {key: value} (each override is `key=value`)."""
    return dict(o.split("=", 1) for o in overrides)


def _link(value: str) -> tuple[str, bool] | None:
    """(grid name, fan-out) of a `grid:NAME` or `grid:NAME/*` value; None for another value."""
    value = _link_text(value)
    if not value.startswith(GRID_PREFIX):
        return None
    name = value.removeprefix(GRID_PREFIX)
    return name.removesuffix(FAN_OUT), name.endswith(FAN_OUT)


def _grid_order(jobs: list[tuple[str, list[str]]]) -> list[str]:
    """The study's grids, each after every grid its values link to (declaration order where
    free). Raises UsageError for a link to no other grid, or grids that link in a cycle."""
    names = list(dict.fromkeys(grid for grid, _ in jobs))
    needs: dict[str, set[str]] = {grid: set() for grid in names}
    for grid, overrides in jobs:
        for key, value in _values(overrides).items():
            link = _link(value)
            if link is None:
                continue
            if link[0] not in needs or link[0] == grid:
                raise UsageError(f"hydra.sweeper.grids.{grid}: {key}={_link_text(value)} names "
                                 f"no other grid of the study (grids: "
                                 f"{', '.join(g for g in names if g != grid)})")
            needs[grid].add(link[0])
    order: list[str] = []
    while len(order) < len(names):
        free = [g for g in names if g not in order and needs[g] <= set(order)]
        if not free:
            raise UsageError("hydra.sweeper.grids: grids "
                             f"{', '.join(g for g in names if g not in order)} link to each "
                             "other in a cycle: no run of them can start first")
        order.append(free[0])
    return order


def _link_text(value: str) -> str:
    """An override's value as written: Hydra escapes `:` in the values it writes."""
    return re.sub(r"\\(.)", r"\1", value)


def link_parents(jobs: list[tuple[str, list[str]]],
                 run_dir: Callable[[list[str]], str]) -> list[tuple[str, list[str]]]:
    """`jobs` with every link to another grid replaced by run directories (`run_dir` of the
    linked run's overrides, its own links replaced first), on whatever key it sits:

    - `KEY=grid:NAME`: the one run of grid NAME that agrees with the job on the keys NAME
      sweeps (`stage.init_from: grid:pretrain`, `data.policy: grid:policy`);
    - `KEY=grid:NAME/*`: every run of grid NAME, one job each (a fan-out: `stage.reward_from:
      grid:rm/*` runs PPO against each reward model, whatever keys the two grids sweep).

    A job with several fan-outs becomes their product. Jobs come back in their order, each
    fanned-out job's runs in the order of the grid it fans out over.

    Raises UsageError (one line) for a link to no other grid, grids that link in a cycle, a
    job that does not set a key its linked grid sweeps, or no or several matching runs.
    """
    raw: dict[str, list[dict[str, str]]] = {}
    for grid, overrides in jobs:
        raw.setdefault(grid, []).append(_values(overrides))
    # per grid: (its raw values, as declared; the overrides of a run, links replaced)
    linked: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
    for grid in _grid_order(jobs):
        linked[grid] = []
        for overrides in (o for g, o in jobs if g == grid):
            values = _values(overrides)
            choices = [[o] for o in overrides]
            for i, (key, value) in enumerate(values.items()):
                link = _link(value)
                if link is None:
                    continue
                where = f"hydra.sweeper.grids.{grid}: {key}={_link_text(value)}"
                parents = _linked_runs(link, values, raw[link[0]], linked[link[0]], where)
                choices[i] = [f"{key}={run_dir(parent)}" for parent in parents]
            linked[grid] += [(values, list(run)) for run in itertools.product(*choices)]
    return [(grid, run) for grid in dict.fromkeys(g for g, _ in jobs) for _, run in linked[grid]]


def _linked_runs(link: tuple[str, bool], values: dict[str, str],
                 declared: list[dict[str, str]],
                 runs: list[tuple[dict[str, str], list[str]]], where: str) -> list[list[str]]:
    """The overrides of the runs of grid `link[0]` a job with `values` links to: all of them
    for a fan-out, else the one agreeing with the job on every key that grid sweeps (as
    `declared`: a key the grid fans out over or links the same way everywhere is not swept)."""
    name, fan_out = link
    if fan_out:
        return [run for _, run in runs]
    swept = sorted({k for d in declared for k in d if len({e.get(k) for e in declared}) > 1})
    unset = [k for k in swept if k not in values]
    if unset:
        raise UsageError(f"{where}: grid {name} sweeps {', '.join(unset)}, which this grid "
                         "does not set: each run must name the value of its parent's")
    matches = [run for d, run in runs if all(d.get(k) == values[k] for k in swept)]
    if len(matches) != 1:
        chosen = " ".join(f"{k}={values[k]}" for k in swept) or "these values"
        raise UsageError(f"{where}: {len(matches)} runs of grid {name} have {chosen}: "
                         "expected exactly one to link to")
    return matches


class StudySweeper(Sweeper):
    def __init__(self, grids: DictConfig | dict[str, Any]) -> None:
        # Unresolved: `${isoflop_tokens:}` in a grid must resolve in each job's config, not here
        if isinstance(grids, DictConfig):
            grids = OmegaConf.to_container(grids, resolve=False)
        self.grids = grids or {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None
        self._parent_dirs: dict[tuple[str, ...], str] = {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _run_dir(self, overrides: list[str]) -> str:
        job = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        return str(Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir))

    def _parent_dir(self, overrides: list[str]) -> str:
        key = tuple(overrides)
        if key not in self._parent_dirs:  # a grid's run is linked to by many: composed once
            try:
                self._parent_dirs[key] = self._run_dir(overrides)
            except (HydraException, OmegaConfBaseException) as error:
                raise UsageError(f"hydra.sweeper.grids: {describe(error)}") from error
        return self._parent_dirs[key]

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
