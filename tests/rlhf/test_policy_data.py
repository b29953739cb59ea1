"""data=policy_comparisons: a reward run collects gold-labelled comparisons of a policy's own
samples once per (policy checkpoint, settings) into the data cache, shares them with every
run that asks for the same, and fingerprints them; `scaling-bon --study` finds the study's
policy and reward models."""

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scaling.config import ConfigError, DataConfig, StageConfig, validate
from scaling.rlhf import gold_reward
from scaling.rlhf.bon import study_runs, up_to_date
from scaling.rlhf.collect import PromptChoice, collect, policy_prompts
from scaling.rlhf.policy_data import PREFIX, params_digest, policy_comparisons
from scaling.stages.parent import load_run
from scaling.sweep import run_id
from tests.runs import pretrain
from tests.test_reward import BIN, run_config

SETTINGS = dict(comparison_samples=3, comparison_prompts="24", comparison_max_new_tokens=24,
                comparison_seed=1)


@pytest.fixture(scope="module")
def policy(sft_policy) -> Path:
    return sft_policy


def policy_data(cache_dir, policy: Path, **settings) -> DataConfig:
    return DataConfig(source="policy_comparisons", policy=str(policy), tokenizer="bytes",
                      val_fraction=0.3, cache_dir=str(cache_dir), **{**SETTINGS, **settings})


def test_the_collection_is_scaling_compares_and_is_made_once(tmp_path, policy):
    data = policy_data(tmp_path / "cache", policy)
    first = policy_comparisons(data)
    (collection,) = (tmp_path / "cache").glob(f"{PREFIX}*/")
    assert first.record["comparisons_reused"] is False
    assert first.fingerprints == {"comparisons_source": collection.name}
    run = load_run(policy)
    expected = collect(run, policy_prompts(run, PromptChoice("train", 24)),
                       PromptChoice("train", 24), gold_reward("sft_body"), n=3,
                       max_new_tokens=24, seed=1).comparisons
    assert first.comparisons == expected and len(expected) > 24
    again = policy_comparisons(data)  # read back: the same comparisons, no sampling
    assert again.record["comparisons_reused"] is True and again.comparisons == expected
    assert again.fingerprints == first.fingerprints
    assert json.loads((collection / "meta.json").read_text())["comparisons"] == len(expected)
    # another seed is another collection
    other = policy_comparisons(replace(data, comparison_seed=2))
    assert other.fingerprints != first.fingerprints
    assert len(list((tmp_path / "cache").glob(f"{PREFIX}*/"))) == 2


def test_the_key_follows_the_policys_parameters(policy):
    params = load_run(policy).params
    changed = {**params, "wte": {"embedding": np.asarray(params["wte"]["embedding"]) + 1e-6}}
    assert params_digest(params) == params_digest(dict(params))
    assert params_digest(changed) != params_digest(params)


def test_reward_models_of_two_sizes_share_one_collection_and_record_it(
        tmp_path, cache_dir, rlhf_parent, policy):
    parent = rlhf_parent
    data = policy_data(cache_dir, policy)
    summaries = []
    for name, init_from in (("rm-parent", parent), ("rm-policy", policy)):
        config = run_config(cache_dir, 20_480, data=data,
                            stage=StageConfig(kind="reward", init_from=str(init_from)))
        summaries.append(pretrain(config, tmp_path / name))
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["comparisons_reused"] for s in summaries] == [False, True] or all(
        s["comparisons_reused"] for s in summaries)  # the module's first test may have made it
    assert len({s["comparisons_source"] for s in summaries}) == 1
    assert summaries[0]["comparisons_policy"] == policy.name
    assert summaries[0]["n_comparisons"] + summaries[0]["n_val_comparisons"] > 24

    # scaling-bon --study: the policy those reward models sampled, smallest first
    found_policy, rms = study_runs(tmp_path)
    assert found_policy == policy.resolve() and {p.name for p in rms} == {"rm-parent",
                                                                         "rm-policy"}
    out = tmp_path / "bon"
    result = subprocess.run([BIN / "scaling-bon", "--study", tmp_path, "--n-max", "4",
                             "--prompts", "val:3", "--max-new-tokens", "16"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "bon.parquet").is_file()
    record = json.loads((out / "bon.json").read_text())
    assert up_to_date(out, policy, rms, {"n_max": 4, "prompts": "val:3", "seed": 0})
    assert not up_to_date(out, policy, rms[:1], {"n_max": 4})
    again = subprocess.run([BIN / "scaling-bon", "--study", tmp_path, "--n-max", "4",
                            "--prompts", "val:3", "--max-new-tokens", "16"],
                           capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert json.loads((out / "bon.json").read_text()) == record


def test_the_policy_and_settings_are_checked_at_launch_and_enter_the_run_id(tmp_path, policy):
    def config(**data):
        return run_config(tmp_path, 20_480, data=DataConfig(
            **{"source": "policy_comparisons", "policy": str(policy), "tokenizer": "bytes",
               **data}), stage=StageConfig(kind="reward", init_from=str(policy)))

    validate(config())
    for data, field in [({"policy": None}, "data.policy"),
                        ({"comparison_samples": 1}, "data.comparison_samples"),
                        ({"comparison_prompts": "some"}, "data.comparison_prompts"),
                        ({"comparison_gold": "nope"}, "data.comparison_gold"),
                        ({"comparison_label_temperature": -1.0},
                         "data.comparison_label_temperature")]:
        with pytest.raises(ConfigError, match=re.escape(field)):
            validate(config(**data))
    with pytest.raises(ConfigError, match=r"data\.policy"):  # another source samples nothing
        validate(config(source="comparisons", paths=["c.jsonl"]))
    as_dict = {"model": {"n_layer": 2, "d_model": 32, "n_ctx": 128}, "train": {"tokens": 1,
               "seed": 0}}
    base = run_id({**as_dict, "data": {"source": "stdlib"}})
    defaults = {f"comparison_{k}": v for k, v in dict(
        samples=4, prompts="train", gold="sft_body", max_new_tokens=0, label_temperature=0.0,
        seed=0).items()}
    # recorded runs keep their ids: the new keys at their defaults are not in the identity
    assert run_id({**as_dict, "data": {"source": "stdlib", "policy": None, **defaults}}) == base
    assert run_id({**as_dict, "data": {"source": "stdlib", **defaults,
                                       "comparison_samples": 8}}) != base


def test_a_policy_that_is_no_run_is_refused_in_one_line(tmp_path, cache_dir, policy):
    result = subprocess.run(
        [BIN / "scaling-train", "stage=reward", f"stage.init_from={policy}",
         "data=policy_comparisons", f"data.policy={tmp_path / 'nowhere'}",
         "data.tokenizer=bytes", f"data.cache_dir={cache_dir}", "model.n_layer=2",
         "model.d_model=32", "model.n_head=2", "model.n_ctx=128", "train.batch_size=8",
         f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "data.policy=" in result.stderr and "not a directory" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--study", "{tmp}", "{tmp}"], "--study finds the policy and reward models: name no run"),
    (["--study", "{tmp}/nowhere"], "nowhere: not a directory"),
    (["--study", "{tmp}"], "no completed reward model (stage=reward, data=policy_comparisons)"),
    ([], "expected POLICY_RUN_DIR, at least one RM_RUN_DIR and OUT_DIR, or --study"),
])
def test_scaling_bon_study_refuses_in_one_line(tmp_path, capsys, args, message):
    from scaling.cli import bon

    with pytest.raises(SystemExit) as exit:
        bon([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.strip().count("\n") == 0 and message in err
    assert not (tmp_path / "bon").exists()
