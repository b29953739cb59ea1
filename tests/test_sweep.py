"""Sweep mechanics: config-pure run directories, resolvers, per-run locks, the launcher."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.scaling_launcher.local_launcher import slot_env
from hydra_plugins.scaling_launcher.study_sweeper import expand_grids, link_parents
from scaling.config import register_configs
from scaling.flops import flops_per_token
from scaling.model import GPTConfig
from scaling.sweep import exclusive_run, planned_flops, register_resolvers, run_id

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "model": {"n_layer": 2, "d_model": 64, "n_head": 2, "n_ctx": 64},
    "data": {"source": "stdlib", "cache_dir": None},
    "train": {"tokens": 200_000, "seed": 0, "lr": None, "log_every_steps": 10},
}


def with_change(group: str, key: str, value) -> dict:
    return {**CONFIG, group: {**CONFIG[group], key: value}}


def test_run_id_is_a_readable_pure_function_of_the_config():
    assert run_id(CONFIG) == run_id({k: dict(v) for k, v in CONFIG.items()})
    assert run_id(CONFIG).startswith("L2-d64-T64-D200k-s0-")
    assert run_id(with_change("train", "lr", 1e-3)) != run_id(CONFIG)
    assert run_id(with_change("data", "source", "files")) != run_id(CONFIG)


def test_bookkeeping_keys_do_not_change_the_run_id():
    assert run_id(with_change("train", "log_every_steps", 1)) == run_id(CONFIG)
    assert run_id(with_change("data", "cache_dir", "/elsewhere")) == run_id(CONFIG)


def compose_preset(name: str, *overrides: str, with_hydra: bool = False):
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "sweeps"), version_base="1.3"):
        return compose(config_name=name, return_hydra_config=with_hydra, overrides=[
            f"hydra.searchpath=[file://{ROOT / 'conf'}]", *overrides])


@pytest.mark.parametrize("budget", [5e11, 1.5e12])
def test_isoflop_runs_of_a_budget_spend_it_within_one_percent(budget):
    for size in ("n100k", "n300k", "n800k"):
        cfg = compose_preset("isoflop_cpu", f"model={size}", f"train.budget={budget}")
        m = cfg.model
        shape = GPTConfig(vocab_size=4096, n_layer=m.n_layer, d_model=m.d_model,
                          n_head=m.n_head, n_ctx=m.n_ctx, d_ff=4 * m.d_model)
        steps = cfg.train.tokens // (cfg.train.batch_size * m.n_ctx)
        flops = steps * cfg.train.batch_size * m.n_ctx * flops_per_token(shape)
        assert cfg.train.tokens % (cfg.train.batch_size * m.n_ctx) == 0
        assert abs(flops / budget - 1) < 0.01, (size, flops)


def test_shape_preset_holds_n_near_its_target():
    for depth in (1, 2, 3, 4, 6):
        m = compose_preset("shape_cpu", f"model.n_layer={depth}").model
        assert m.d_model % m.n_head == 0
        assert abs(12 * depth * m.d_model**2 / 3e5 - 1) < 0.25


# `make transfer-demo` and `make rlhf-demo` write runs/transfer and runs/rlhf (the issues'
# contracts); their GPU twins another.
SWEEP_DIRS = {"transfer_cpu": "runs/transfer", "transfer": "runs/transfer_gpu",
              "overoptimization_cpu": "runs/rlhf", "overoptimization": "runs/rlhf_gpu"}


def test_every_preset_composes_with_a_cpu_twin():
    presets = {p.stem for p in (ROOT / "sweeps").glob("*.yaml")}
    for name in presets:
        cfg = compose_preset(name, "train.budget=1e16", with_hydra=True)
        assert cfg.hydra.sweeper.get("params") or cfg.hydra.sweeper.get("grids"), name
        # its own directory, or one per arm below it (wsd_cpu/cosine, mlm_vs_clm_cpu/mlm-0.15)
        home = SWEEP_DIRS.get(name, f"runs/{name}")
        assert cfg.hydra.sweep.dir == home or cfg.hydra.sweep.dir.startswith(f"{home}/"), name
    # The demo is CPU-sized, and it is the CPU twin of the GPU Kaplan study.
    studies = {p for p in presets if not p.endswith("_cpu")} - {"demo", "kaplan_gpu"}
    assert {f"{p}_cpu" for p in studies} <= presets


def study_runs(name: str, *arguments: str) -> dict[str, list]:
    """Each grid of a study preset: the composed config of every run it launches."""
    sweeper = compose_preset(name, with_hydra=True).hydra.sweeper
    grids = OmegaConf.to_container(sweeper.grids, resolve=False)
    runs: dict[str, list] = {}
    for grid, overrides in expand_grids(grids, arguments, OverridesParser.create()):
        runs.setdefault(grid, []).append(compose_preset(name, *overrides))
    return runs


def n_nonembed(cfg) -> int:
    return 12 * cfg.model.n_layer * cfg.model.d_model**2


def test_study_grids_expand_separately_and_take_command_line_overrides():
    grids = {"a": {"model.d_model": "16,32", "train.tokens": 1000},
             "b": {"model.n_layer": "1,2,3"}, "off": None}
    jobs = expand_grids(grids, ["train.seed=0,1", "train.tokens=5"], OverridesParser.create())
    assert [grid for grid, _ in jobs] == ["a"] * 4 + ["b"] * 6
    assert jobs[0][1] == ["model.d_model=16", "train.seed=0", "train.tokens=5"]
    assert all("train.tokens=5" in overrides for _, overrides in jobs)
    with pytest.raises(ValueError, match=r"grids\.a"):
        expand_grids({"a": {}}, [], OverridesParser.create())
    with pytest.raises(ValueError, match="at least one grid"):
        expand_grids({}, [], OverridesParser.create())


def test_a_grid_starts_each_run_from_the_run_of_its_parent_grid_with_the_same_swept_values():
    jobs = expand_grids({"pre": {"model": "a,b", "train.tokens": 9},
                         "ft": {"model": "a,b", "train.tokens": "1,2",
                                "stage.init_from": "grid:pre"}}, [], OverridesParser.create())
    linked = link_parents(jobs, lambda overrides: "runs/" + "-".join(overrides))
    assert linked[:2] == jobs[:2]  # the parents' own runs are unchanged
    init_from = {tuple(o for o in overrides if not o.startswith("stage.init_from")):
                 next(o for o in overrides if o.startswith("stage.init_from"))
                 for _, overrides in linked[2:]}
    assert init_from == {
        ("model=a", "train.tokens=1"): "stage.init_from=runs/model=a-train.tokens=9",
        ("model=a", "train.tokens=2"): "stage.init_from=runs/model=a-train.tokens=9",
        ("model=b", "train.tokens=1"): "stage.init_from=runs/model=b-train.tokens=9",
        ("model=b", "train.tokens=2"): "stage.init_from=runs/model=b-train.tokens=9"}


@pytest.mark.parametrize(("grids", "message"), [
    ({"ft": {"model": "a", "stage.init_from": "grid:nope"}}, "names no other grid"),
    ({"pre": {"model": "a,b"}, "ft": {"train.tokens": 1, "stage.init_from": "grid:pre"}},
     "grid pre sweeps model, which this grid does not set"),
    ({"pre": {"model": "a,b"}, "ft": {"model": "c", "stage.init_from": "grid:pre"}},
     "0 runs of grid pre have model=c"),
])
def test_a_parent_grid_that_names_no_single_run_is_one_line(grids, message):
    jobs = expand_grids(grids, [], OverridesParser.create())
    with pytest.raises(ValueError, match=message):
        link_parents(jobs, lambda overrides: "runs/x")


def test_demo_study_covers_sizes_budgets_shapes_and_batch_sizes():
    runs = study_runs("demo")
    assert {g: len(r) for g, r in runs.items()} == {"nd": 12, "shape": 4, "isoflop_1e12": 4,
                                                    "isoflop_4e12": 4, "batch": 3}
    assert {cfg.data.transfer for grid in runs.values() for cfg in grid} == {"prose"}
    # bytes: the Transformer, not the vocabulary, is what N counts at these sizes
    assert {cfg.data.tokenizer for grid in runs.values() for cfg in grid} == {"bytes"}
    for grid in ("isoflop_1e12", "isoflop_4e12"):  # each run spends its budget
        assert len({cfg.train.budget for cfg in runs[grid]}) == 1
        assert all(abs(planned_flops(cfg) / cfg.train.budget - 1) < 0.02 for cfg in runs[grid])
    shape = runs["shape"]
    assert sorted(cfg.model.n_layer for cfg in shape) == [1, 2, 3, 6]
    assert all(abs(n_nonembed(cfg) / 1.1e5 - 1) < 0.15 for cfg in shape)
    assert all(cfg.model.d_model % cfg.model.n_head == 0 for cfg in shape)
    assert {cfg.train.batch_size for cfg in runs["batch"]} == {4, 8, 32}


def test_gpu_kaplan_study_spans_the_sizes_and_budgets_the_issue_asks_for():
    runs = study_runs("kaplan_gpu")
    sizes = {n_nonembed(cfg) for grid in ("nd", "sizes") for cfg in runs[grid]}
    assert len(sizes) >= 7 and min(sizes) <= 1.2e5 and max(sizes) >= 3e7
    assert max(cfg.train.tokens for cfg in runs["nd"]) >= 3e8
    assert all(cfg.data.source == "python" for grid in runs.values() for cfg in grid)
    for cfg in runs["isoflop"]:  # each run spends its budget, to within a step
        assert abs(planned_flops(cfg) / cfg.train.budget - 1) < 0.02
    assert all(abs(n_nonembed(cfg) / 3e6 - 1) < 0.2 for cfg in runs["shape"])


@pytest.mark.parametrize("name", ["transfer_cpu", "transfer"])
def test_transfer_studies_fine_tune_each_size_on_code_from_its_prose_parent(name):
    sweeper = compose_preset(name, with_hydra=True).hydra.sweeper
    grids = OmegaConf.to_container(sweeper.grids, resolve=False)
    jobs = link_parents(expand_grids(grids, [], OverridesParser.create()),
                        lambda overrides: "runs/" + "+".join(overrides).replace("=", "-"))
    runs: dict[str, list] = {}
    for grid, overrides in jobs:
        runs.setdefault(grid, []).append((compose_preset(name, *overrides), overrides))
    sizes = {n_nonembed(cfg) for cfg, _ in runs["pretrain"]}
    assert len(sizes) >= 4 and {n_nonembed(cfg) for cfg, _ in runs["scratch"]} == sizes
    assert {(cfg.data.source, cfg.stage.kind) for cfg, _ in runs["pretrain"]} == {
        ("prose", "pretrain")}
    assert {(cfg.data.source, cfg.stage.kind) for cfg, _ in runs["scratch"]} == {
        ("code", "pretrain")}
    assert {cfg.data.tokenizer for grid in runs.values() for cfg, _ in grid} == {"bytes"}
    d_f = sorted({cfg.train.tokens for cfg, _ in runs["finetune"]})
    assert len(d_f) >= 5 and d_f[-1] / d_f[0] >= 100  # >= 5 values over >= 2 decades
    d = sorted({cfg.train.tokens for cfg, _ in runs["scratch"]})
    assert d[0] <= d_f[0] and d[-1] >= 3 * d_f[-1]  # the scratch fit covers every D_E < 3 D_F
    for cfg, _ in runs["finetune"]:  # each from the pretraining run of its own width
        assert cfg.data.source == "code" and cfg.stage.kind == "finetune"
        assert f"model.d_model-{cfg.model.d_model}" in cfg.stage.init_from.split("+")


def test_a_run_directory_is_held_by_one_process_at_a_time(tmp_path):
    with exclusive_run(tmp_path) as first:
        assert first
        with exclusive_run(tmp_path) as second:
            assert not second
        holder = subprocess.run(
            [sys.executable, "-c",
             "import sys; from scaling.sweep import exclusive_run\n"
             f"with exclusive_run({str(tmp_path)!r}) as ours: sys.exit(0 if ours else 3)"],
            capture_output=True)
        assert holder.returncode == 3
    with exclusive_run(tmp_path) as again:
        assert again


def test_launcher_gives_each_run_a_gpu_and_splits_memory_when_shared():
    assert slot_env(0, 2, [], 0.9) == {}
    assert slot_env(1, 2, [0, 1], 0.9) == {"CUDA_VISIBLE_DEVICES": "1"}
    shared = slot_env(3, 4, [5], 0.9)
    assert shared == {"CUDA_VISIBLE_DEVICES": "5", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.225"}
    assert slot_env(2, 4, [0, 1], 0.8)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.400"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ


def test_launcher_configs_compose():
    local = compose_preset("model_size_cpu", "hydra/launcher=local", "hydra.launcher.n_jobs=3",
                           with_hydra=True).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.n_jobs == 3
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    slurm = compose_preset("model_size", "hydra/launcher=slurm", with_hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.gpus_per_node == 1 and slurm.array_parallelism == 32
