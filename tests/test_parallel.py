"""Data parallelism, FSDP and gradient accumulation: the same training, however it is split.

The multi-device cases run in one subprocess with 8 virtual CPU devices (XLA_FLAGS must be set
before JAX starts); it trains the same tiny run on one device, with dp, with fsdp and with fsdp
over 2 micro-batches, resumes an fsdp run from a checkpoint, and reports back as JSON.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.config import Config, DataConfig, ModelConfig, TrainConfig

N_DEVICES = 8
CURVE = ["step", "train_loss", "val_loss", "grad_norm"]


def _config(corpus_dir: str, cache_dir: str, **train) -> Config:
    """12 steps of 16 sequences: each device gets 2 (1 per micro-batch with grad_accum=2)."""
    base = dict(tokens=12 * 16 * 32, batch_size=16, eval_count=4, eval_batches=2, lr=3e-3)
    return Config(
        model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32),
        data=DataConfig(source="files", paths=[f"{corpus_dir}/*.py"], vocab_size=512,
                        cache_dir=cache_dir),
        train=TrainConfig(**{**base, **train}),
    )


def _multi_device_worker(corpus_dir: str, cache_dir: str, out_dir: str) -> None:
    """Runs in the subprocess: every mode's metrics, some FSDP shardings, an FSDP resume."""
    import jax
    import pandas as pd

    from scaling.parallel import Placement
    from scaling.stages import prepare
    from scaling.train import setup_models
    from tests.runs import pretrain

    out = Path(out_dir)
    results = {"n_devices": jax.device_count(), "curves": {}}
    runs = {"none": {}, "dp": {"parallel": "dp"}, "fsdp": {"parallel": "fsdp"},
            "fsdp_accum": {"parallel": "fsdp", "grad_accum": 2}}
    for name, overrides in runs.items():
        summary = pretrain(_config(corpus_dir, cache_dir, **overrides), out / name)
        metrics = pd.read_parquet(out / name / "metrics.parquet")
        results["curves"][name] = metrics[CURVE].to_dict("list")
        results.setdefault("n_devices_used", {})[name] = summary["n_devices"]

    config = _config(corpus_dir, cache_dir, parallel="fsdp")
    run = prepare(config)
    _, state, _ = setup_models(run.replicas, config.train)
    results["specs"] = {
        path: str(tuple(leaf.sharding.spec))
        for path, leaf in (
            ("params/wte/embedding", state["params"]["wte"]["embedding"]),
            ("params/h_0/attn/c_attn/kernel", state["params"]["h_0"]["attn"]["c_attn"]["kernel"]),
            ("params/h_1/mlp/c_proj/kernel", state["params"]["h_1"]["mlp"]["c_proj"]["kernel"]),
            ("params/h_0/ln_1/scale", state["params"]["h_0"]["ln_1"]["scale"]),
            ("adam_mu/h_0/mlp/c_fc/kernel",
             state["opt_state"][1][0].mu["h_0"]["mlp"]["c_fc"]["kernel"]),
        )
    }
    results["shard_shape"] = list(
        state["params"]["h_0"]["mlp"]["c_fc"]["kernel"].addressable_shards[0].data.shape
    )
    try:
        Placement.create("dp", micro_batch_size=12)
    except Exception as error:
        results["uneven_batch_error"] = str(error)

    # Resume: drop the final checkpoint and the summary, and train the last steps again.
    resumed_dir = out / "fsdp_resumed"
    pretrain(_config(corpus_dir, cache_dir, parallel="fsdp", checkpoint_every_steps=8),
             resumed_dir)
    final = json.loads((resumed_dir / "summary.json").read_text())["final_val_loss"]
    shutil.rmtree(resumed_dir / "checkpoints" / "12")
    (resumed_dir / "summary.json").unlink()
    again = pretrain(_config(corpus_dir, cache_dir, parallel="fsdp", checkpoint_every_steps=8),
                     resumed_dir)
    results["resume"] = {"from": again["resumed_from_step"], "final": final,
                         "again": again["final_val_loss"]}
    (out / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def multi_device(corpus_dir, cache_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("multi_device")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={N_DEVICES}",
           "JAX_PLATFORMS": "cpu"}
    code = ("import sys; from tests.test_parallel import _multi_device_worker as w; "
            "w(*sys.argv[1:])")
    result = subprocess.run(
        [sys.executable, "-c", code, str(corpus_dir), str(cache_dir), str(out)],
        capture_output=True, text=True, timeout=600, env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_the_worker_saw_eight_devices(multi_device):
    assert multi_device["n_devices"] == N_DEVICES
    assert multi_device["n_devices_used"] == {"none": 1, "dp": 8, "fsdp": 8, "fsdp_accum": 8}


@pytest.mark.parametrize("mode", ["dp", "fsdp", "fsdp_accum"])
def test_loss_curve_on_eight_devices_equals_one_device(multi_device, mode):
    one, many = multi_device["curves"]["none"], multi_device["curves"][mode]
    assert many["step"] == one["step"]
    for column in ("train_loss", "val_loss", "grad_norm"):
        np.testing.assert_allclose(many[column], one[column], rtol=2e-5, err_msg=column)


def test_fsdp_splits_weights_and_adam_moments_along_d_model_by_name(multi_device):
    assert multi_device["specs"] == {
        "params/wte/embedding": "(None, 'data')",  # [vocab, d_model]
        "params/h_0/attn/c_attn/kernel": "('data', None)",  # [d_model, 3 d_model]
        "params/h_1/mlp/c_proj/kernel": "(None, 'data')",  # [d_ff, d_model]
        "params/h_0/ln_1/scale": "()",  # replicated
        "adam_mu/h_0/mlp/c_fc/kernel": "('data', None)",  # follows its parameter
    }
    assert multi_device["shard_shape"] == [32 // N_DEVICES, 128]


def test_a_batch_that_does_not_split_over_the_devices_is_refused(multi_device):
    message = multi_device["uneven_batch_error"]
    assert "train.batch_size" in message and "8 devices" in message


def test_an_fsdp_run_resumes_from_its_sharded_checkpoint(multi_device):
    resume = multi_device["resume"]
    assert resume["from"] == 8
    assert resume["again"] == resume["final"]


def test_accumulated_micro_batches_equal_the_big_batch(corpus_dir, cache_dir):
    """The step over 4 micro-batches of 4 equals the step over the batch of 16."""
    import jax

    from scaling.stages import prepare
    from scaling.train import setup_models

    outcomes = []
    for grad_accum in (1, 4):
        config = _config(str(corpus_dir), str(cache_dir), grad_accum=grad_accum)
        run = prepare(config)
        placement, state, train_step = setup_models(run.replicas, config.train)
        losses = []
        for step in range(3):
            batch = run.replicas[0].stage.train_batch(step)
            state, metrics = train_step(state, placement.batch(batch))
            losses.append(float(metrics["loss"]))
        outcomes.append((losses, float(metrics["grad_norm"]), state["params"]))
    (big_losses, big_norm, big_params), (acc_losses, acc_norm, acc_params) = outcomes
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-6)
    np.testing.assert_allclose(acc_norm, big_norm, rtol=1e-5)
    for big, acc in zip(jax.tree_util.tree_leaves(big_params),
                        jax.tree_util.tree_leaves(acc_params), strict=True):
        np.testing.assert_allclose(acc, big, rtol=1e-5, atol=1e-6)
