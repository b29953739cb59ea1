"""WSD cooldown branches (train.cooldowns): each branch is the standalone wsd run it stands
for, recorded as its own run with its costs; the trunk keeps its branch points; a killed trunk
or branch resumes exactly; a completed trunk trains nothing again."""

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from hydra_plugins.scaling_launcher.local_launcher import completed
from scaling import step as step_module
from scaling.config import branch_steps, to_dict
from scaling.record import read_branches, read_summary
from scaling.results import collect
from scaling.sweep import run_id
from tests.runs import pretrain, pretrain_replicas

COOLDOWNS = [4096, 8192, 16_384]  # 16, 32 and 64 steps of 256 tokens


@pytest.fixture
def trunk_config(tiny_config):
    return tiny_config(tokens=16_384, schedule="wsd", cooldowns=COOLDOWNS, warmup="0.1",
                       checkpoint_every_steps=8, keep_checkpoints=1)


def crash_at_steps(monkeypatch, steps: set[int]) -> None:
    """Make the next steps numbered `steps` (the state's step after it) raise once each, as a
    crash mid-training would, in the trunk or a branch."""
    original, pending = step_module.make_train_step, set(steps)

    def crashing(loss_fn, tx):
        step = original(loss_fn, tx)

        def wrapped(state, batch):
            new_state, metrics = step(state, batch)
            if int(new_state["step"]) in pending:
                pending.discard(int(new_state["step"]))
                raise RuntimeError("simulated crash")
            return new_state, metrics

        return wrapped

    monkeypatch.setattr(step_module, "make_train_step", crashing)


def test_branch_steps_end_each_cooldown_at_its_d():
    trunk, spans = branch_steps(COOLDOWNS, 256, 0.2)
    assert spans == [(13, 16), (26, 32), (51, 64)] and trunk == 51


def test_branches_are_their_standalone_runs_recorded_beside_the_trunk(trunk_config, tiny_config,
                                                                      tmp_path):
    trunk_dir = tmp_path / run_id(to_dict(trunk_config))
    summaries = pretrain_replicas(trunk_config, trunk_dir)
    assert [s["tokens"] for s in summaries] == COOLDOWNS
    per_step = 256 * summaries[0]["flops_per_token"]
    for s, (start, end) in zip(summaries, [(13, 16), (26, 32), (51, 64)], strict=True):
        assert s["status"] == "completed" and s["branch_of"] == trunk_dir.name
        assert (s["branch_step"], s["steps"]) == (start, end)
        assert s["flops"] == (end - start) * per_step  # what the branch cost: its cooldown
        assert s["path_flops"] == end * per_step  # what its model saw
        assert s["trunk_flops"] == 51 * per_step
        assert s["resumed_from_step"] is None  # it started from the trunk, nothing resumed
    # the trunk kept every branch point whatever keep_checkpoints=1 pruned
    assert {13, 26, 51} <= {int(p.name) for p in (trunk_dir / "checkpoints").iterdir()}
    trunk = read_branches(trunk_dir)
    assert trunk["status"] == "completed" and trunk["trunk_steps"] == 51
    assert [b["status"] for b in trunk["branches"]] == ["completed"] * 3

    # the middle branch is the wsd run of D = 8192 alone, loss for loss
    alone = tiny_config(tokens=8192, schedule="wsd", warmup=summaries[1]["config"]["train"][
        "warmup"], checkpoint_every_steps=8, keep_checkpoints=1)
    assert run_id(to_dict(alone)) == trunk["branches"][1]["run_id"]
    pretrain(alone, tmp_path / "alone")
    ours = pd.read_parquet(tmp_path / trunk["branches"][1]["run_id"] / "metrics.parquet")
    theirs = pd.read_parquet(tmp_path / "alone" / "metrics.parquet")
    # the trunk's evaluations up to the branch point, then the branch's own: the same model's
    both = ours.merge(theirs, on="step", suffixes=("", "_alone"))
    assert both["step"].iloc[-1] == 32 and len(both) >= 3
    assert both["val_loss"].tolist() == pytest.approx(both["val_loss_alone"].tolist(), rel=1e-5)
    assert both["lr"].tolist() == pytest.approx(both["lr_alone"].tolist(), rel=1e-6)

    # the table: three runs (the trunk is none), C the compute each model saw
    table = collect(tmp_path).results.set_index("run_id")
    branches = table.loc[[b["run_id"] for b in trunk["branches"]]]
    assert branches["C"].tolist() == [s["path_flops"] for s in summaries]
    assert branches["flops"].tolist() == [s["flops"] for s in summaries]
    assert trunk_dir.name not in table.index

    # again: nothing to train, for the launcher and for the run itself
    assert completed(OmegaConf.structured(trunk_config), trunk_dir)
    assert [s["final_val_loss"] for s in pretrain_replicas(trunk_config, trunk_dir)] == [
        s["final_val_loss"] for s in summaries]


def test_a_killed_trunk_or_branch_resumes_exactly(trunk_config, tmp_path, monkeypatch):
    whole = pretrain_replicas(trunk_config, tmp_path / "whole" / "trunk")
    trunk_dir = tmp_path / "killed" / "trunk"
    crash_at_steps(monkeypatch, {20})  # in the trunk, between its checkpoints of 16 and 24
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain_replicas(trunk_config, trunk_dir)
    assert read_branches(trunk_dir)["status"] == "failed"
    crash_at_steps(monkeypatch, {60})  # in the last branch, after its checkpoint of 56
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain_replicas(trunk_config, trunk_dir)
    done = [json.loads((trunk_dir.parent / b["run_id"] / "summary.json").read_text())["status"]
            for b in read_branches(trunk_dir)["branches"]]
    assert done == ["completed", "completed", "failed"]
    monkeypatch.undo()
    resumed = pretrain_replicas(trunk_config, trunk_dir)
    assert [s["final_val_loss"] for s in resumed] == pytest.approx(
        [s["final_val_loss"] for s in whole], rel=1e-6)
    last = read_summary(trunk_dir.parent / read_branches(trunk_dir)["branches"][2]["run_id"])
    assert last["resumed_from_step"] == 56
