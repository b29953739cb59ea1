"""Links between a study's grids on any key (`grid:NAME`), fan-outs (`grid:NAME/*`), and the
launcher's order over every link; the overoptimization study's grids."""

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.scaling_launcher.local_launcher import parent_jobs
from hydra_plugins.scaling_launcher.study_sweeper import expand_grids, link_parents
from tests.test_sweep import compose_preset, n_nonembed, study_runs


def linked(grids: dict) -> list[tuple[str, dict[str, str]]]:
    """The study's jobs, links replaced by `runs/<overrides>`, each as (grid, {key: value})."""
    jobs = expand_grids(grids, [], OverridesParser.create())
    out = link_parents(jobs, lambda overrides: "runs/" + ",".join(overrides))
    return [(grid, dict(o.split("=", 1) for o in overrides)) for grid, overrides in out]


STUDY = {
    "pre": {"model": "a,b", "train.tokens": 9},
    "policy": {"model": "b", "stage": "sft", "stage.init_from": "grid:pre"},
    "rm": {"model": "a,b", "stage": "reward", "stage.init_from": "grid:pre",
           "data.policy": "grid:policy"},
    "rl": {"model": "b", "stage": "rl", "stage.init_from": "grid:policy",
           "stage.reward_from": "grid:rm/*"},
}


def test_a_link_on_any_key_names_the_run_of_the_linked_grid_with_its_links_replaced():
    jobs = linked(STUDY)
    policy_dir = "runs/model=b,stage=sft,stage.init_from=runs/model=b,train.tokens=9"
    policy = [values for grid, values in jobs if grid == "policy"]
    assert [p["stage.init_from"] for p in policy] == ["runs/model=b,train.tokens=9"]
    rms = [values for grid, values in jobs if grid == "rm"]
    # each reward model starts from the parent of its own size, all sample the one policy
    assert [(r["model"], r["stage.init_from"]) for r in rms] == [
        ("a", "runs/model=a,train.tokens=9"), ("b", "runs/model=b,train.tokens=9")]
    assert {r["data.policy"] for r in rms} == {policy_dir}


def test_a_fan_out_makes_one_run_per_run_of_the_linked_grid_whatever_it_sweeps():
    jobs = linked(STUDY)
    rl = [values for grid, values in jobs if grid == "rl"]
    assert len(rl) == 2 and {r["model"] for r in rl} == {"b"}  # the policy keeps its size
    assert [r["stage.reward_from"].split(",")[0] for r in rl] == ["runs/model=a", "runs/model=b"]
    assert all("data.policy=runs/model=b,stage=sft" in r["stage.reward_from"] for r in rl)
    assert {r["stage.init_from"] for r in rl} == {
        "runs/model=b,stage=sft,stage.init_from=runs/model=b,train.tokens=9"}
    # the other grids' runs are unchanged, in order
    assert [grid for grid, _ in jobs] == ["pre", "pre", "policy", "rm", "rm", "rl", "rl"]


def test_two_fan_outs_make_their_product():
    jobs = linked({"x": {"k": "1,2"}, "y": {"m": "1,2,3"},
                   "z": {"stage.init_from": "grid:x/*", "stage.reward_from": "grid:y/*"}})
    pairs = [(v["stage.init_from"], v["stage.reward_from"]) for g, v in jobs if g == "z"]
    assert len(pairs) == 6 and len(set(pairs)) == 6


def test_grids_link_in_dependency_order_whatever_their_declaration_order():
    forward = {"rl": STUDY["rl"], "rm": STUDY["rm"], "policy": STUDY["policy"],
               "pre": STUDY["pre"]}
    assert sorted(map(str, linked(forward))) == sorted(map(str, linked(STUDY)))


@pytest.mark.parametrize(("grids", "message"), [
    ({"a": {"k": 1, "data.policy": "grid:nope"}}, r"data\.policy=grid:nope names no other grid"),
    ({"a": {"k": 1, "stage.init_from": "grid:b"}, "b": {"k": 2, "data.policy": "grid:a"}},
     "link to each other in a cycle"),
    ({"a": {"k": "1,2"}, "b": {"data.policy": "grid:a"}},
     "grid a sweeps k, which this grid does not set"),
    ({"a": {"k": "1,2"}, "b": {"x": 1, "stage.reward_from": "grid:a/*"},
      "c": {"stage.init_from": "grid:b"}}, "2 runs of grid b have these values"),
])
def test_links_that_name_no_single_run_are_one_line(grids, message):
    jobs = expand_grids(grids, [], OverridesParser.create())
    with pytest.raises(ValueError, match=message):
        link_parents(jobs, lambda overrides: "runs/x")


def job(run_dir: str, **stage) -> tuple[list[str], object, Path]:
    data = {"source": "policy_comparisons", "policy": stage.pop("policy", None), "paths": []}
    config = OmegaConf.create({"stage": {"init_from": None, "reward_from": None, **stage},
                               "data": data, "model": {}, "train": {}})
    return [], config, Path(run_dir)


def test_the_launcher_waits_for_every_run_a_job_links_to_on_any_key(tmp_path):
    runs = {name: str(tmp_path / name) for name in ("pre", "sft", "rm", "rl")}
    jobs = [job(runs["rl"], init_from=runs["sft"], reward_from=runs["rm"]),
            job(runs["rm"], init_from=runs["pre"], policy=runs["sft"] + "/"),
            job(runs["sft"], init_from=runs["pre"]), job(runs["pre"])]
    assert parent_jobs(jobs) == {0: [("stage.init_from", 2), ("stage.reward_from", 1)],
                                 1: [("data.policy", 2), ("stage.init_from", 3)],
                                 2: [("stage.init_from", 3)]}


def test_overoptimization_study_links_one_policy_to_reward_models_of_four_sizes():
    runs = study_runs("overoptimization_cpu")
    assert {g: len(r) for g, r in runs.items()} == {"parents": 4, "policy": 1, "rm": 4, "rl": 1,
                                                    "dpo": 3}
    sizes = sorted(n_nonembed(cfg) for cfg in runs["rm"])
    assert len(sizes) == 4 and sizes[-1] / sizes[0] >= 10
    assert {cfg.data.tokenizer for grid in runs.values() for cfg in grid} == {"bytes"}
    assert {cfg.data.source for cfg in runs["rm"]} == {"policy_comparisons"}
    (rl,) = runs["rl"]
    assert rl.stage.kl_coef == 0 and rl.stage.reward_from == "grid:rm/*"
    assert rl.model.d_model == runs["policy"][0].model.d_model
    # DPO at 3 values of β from the policy, on the reward models' collection (same keys)
    assert sorted(cfg.stage.beta for cfg in runs["dpo"]) == [0.03, 0.1, 0.3]
    collection = ("policy", "comparison_samples", "comparison_prompts")
    assert {tuple(str(cfg.data[k]) for k in collection) for cfg in runs["rm"] + runs["dpo"]} \
        == {tuple(str(runs["rm"][0].data[k]) for k in collection)}
    assert {cfg.stage.init_from for cfg in runs["dpo"]} == {"grid:policy"}
    assert all(cfg.stage.gold_samples > 0 for cfg in runs["dpo"])


@pytest.mark.parametrize("name", ["overoptimization", "overoptimization_cpu"])
def test_overoptimization_presets_link_into_one_study(name):
    sweeper = compose_preset(name, with_hydra=True).hydra.sweeper
    grids = OmegaConf.to_container(sweeper.grids, resolve=False)
    jobs = link_parents(expand_grids(grids, [], OverridesParser.create()),
                        lambda overrides: "runs/" + ",".join(overrides))
    rl = [dict(o.split("=", 1) for o in overrides) for grid, overrides in jobs if grid == "rl"]
    rms = [overrides for grid, overrides in jobs if grid == "rm"]
    assert len(rl) == len(rms) >= 4  # PPO against every reward model
