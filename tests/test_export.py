"""Hugging Face interop: scaling-export's checkpoint computes our model in `transformers`, its
tokenizer gives our ids, and stage.init_from=hf:DIR starts a run from it (scaling.hf)."""

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from transformers import AutoTokenizer, GPT2LMHeadModel

from scaling.cli import export
from scaling.config import Config, ConfigError, DataConfig, ModelConfig, StageConfig, TrainConfig
from scaling.hf import PADDING, WEIGHTS, CheckpointFormatError, gpt2_tensors, read_checkpoint
from scaling.model import (
    GPT,
    REWARD_HEAD,
    VALUE_HEAD,
    GPTConfig,
    init_params,
    init_reward_head,
    model_shape,
    token_losses,
)
from scaling.stages.parent import load_run
from tests.runs import pretrain

STDLIB = Path(sysconfig.get_paths()["stdlib"])
HELD_OUT = ("textwrap.py", "difflib.py", "fractions.py")  # not in the training corpus
JAPANESE = ("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
            "何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。\n"
            "「こんにちは、世界」と言った。Ā <|endoftext|> 終わり")
STEPS = 20


def _config(corpus_dir, cache_dir, tokenizer: str, scan_layers: bool, **stage) -> Config:
    return Config(
        model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=64, scan_layers=scan_layers),
        data=DataConfig(source="files", paths=[str(corpus_dir / "*.py")], tokenizer=tokenizer,
                        vocab_size=300, cache_dir=str(cache_dir)),  # padded to 320 rows
        train=TrainConfig(tokens=STEPS * 8 * 64, batch_size=8, eval_count=2, eval_batches=1,
                          lr=3e-3, checkpoint_every_steps=STEPS // 2),
        stage=StageConfig(**stage),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_dir, cache_dir) -> dict[str, Path]:
    """Two tiny trained runs: byte-level BPE (300 tokens in 320 rows: padding to cut) with
    unrolled layers, and bytes with scan_layers (layers stacked under h/)."""
    out = {}
    for kind, scan in (("bpe", False), ("bytes", True)):
        run_dir = tmp_path_factory.mktemp(f"run_{kind}")
        assert pretrain(_config(corpus_dir, cache_dir, kind, scan), run_dir)["status"] == \
            "completed"
        out[kind] = run_dir
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for kind, run_dir in runs.items():
        out[kind] = tmp_path_factory.mktemp(f"hf_{kind}")
        export([str(run_dir), str(out[kind])])
    return out


def _ours(run_dir: Path, step: str = "latest") -> tuple[GPTConfig, dict, object]:
    run = load_run(run_dir, step)
    shape = model_shape(ModelConfig(**run.summary["config"]["model"]), run.summary["vocab_size"])
    return replace(shape, dtype="float32", attention="xla"), run.params, \
        run.tokenizer_dataset().tokenizer


def _window(tokenizer, n_ctx: int, name: str) -> np.ndarray:
    """A held-out stdlib file's first n_ctx tokens after an eos, as a document starts."""
    return np.array([[tokenizer.eos_id, *tokenizer.encode((STDLIB / name).read_text())]
                     [:n_ctx]])


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_transformers_computes_our_next_token_distribution(runs, exported, kind):
    cfg, params, tokenizer = _ours(runs[kind])
    model = GPT2LMHeadModel.from_pretrained(exported[kind]).eval()
    assert model.config.vocab_size == tokenizer.vocab_size  # padding rows cut
    for name in HELD_OUT:
        ids = _window(tokenizer, cfg.n_ctx, name)
        # ours over the real vocabulary: what our sampler draws from (padding never drawn)
        ours = np.asarray(GPT(cfg).apply({"params": params}, jnp.asarray(ids)),
                          np.float64)[0, :, :cfg.vocab_size]
        with torch.no_grad():
            theirs = model(torch.from_numpy(ids)).logits[0].double().numpy()
        assert np.abs(ours - theirs).max() <= 1e-4
        log_p = ours - np.logaddexp.reduce(ours, axis=-1, keepdims=True)
        log_q = theirs - np.logaddexp.reduce(theirs, axis=-1, keepdims=True)
        kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
        assert kl.max() <= 1e-6


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_greedy_generations_are_identical(runs, exported, kind):
    from scaling.sample import generate

    cfg, params, tokenizer = _ours(runs[kind])
    model = GPT2LMHeadModel.from_pretrained(exported[kind]).eval()
    for name in HELD_OUT:
        prompt = _window(tokenizer, 24, name)
        samples = generate(cfg, params, prompt, max_new_tokens=32, temperature=0,
                           eos_id=tokenizer.eos_id)
        ours = np.asarray(samples.tokens_BxNxT[0, 0, :int(samples.lengths_BxN[0, 0])])
        with torch.no_grad():
            out = model.generate(torch.from_numpy(prompt), attention_mask=torch.ones_like(
                torch.from_numpy(prompt)), max_new_tokens=32, do_sample=False)
        theirs = out[0, prompt.shape[1]:].numpy()
        assert len(ours) == 32 or ours[-1] == tokenizer.eos_id
        np.testing.assert_array_equal(ours, theirs[:len(ours)])


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_the_exported_tokenizer_gives_our_ids(runs, exported, kind):
    _, _, tokenizer = _ours(runs[kind])
    theirs = AutoTokenizer.from_pretrained(exported[kind])
    assert theirs.eos_token_id == tokenizer.eos_id
    assert len(theirs) == tokenizer.vocab_size
    texts = [(STDLIB / name).read_text() for name in (*HELD_OUT, "json/__init__.py")]
    for text in [*texts, JAPANESE]:
        ids = tokenizer.encode(text)
        assert theirs.encode(text) == ids
        assert theirs.decode(ids) == tokenizer.decode(ids) == text


def test_step_picks_a_checkpoint(runs, tmp_path):
    export([str(runs["bpe"]), str(tmp_path / "half"), "--step", str(STEPS // 2)])
    _, params, _ = _ours(runs["bpe"], str(STEPS // 2))
    with safe_open(tmp_path / "half" / WEIGHTS, "np") as f:
        assert f.metadata()["scaling_step"] == str(STEPS // 2)
        np.testing.assert_array_equal(f.get_tensor("transformer.h.1.mlp.c_fc.weight"),
                                      params["h_1"]["mlp"]["c_fc"]["kernel"])


def _run_export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([Path(sys.executable).parent / "scaling-export", *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.parametrize(("args", "message"), [
    (lambda runs, tmp: [tmp / "nowhere", tmp / "out"], "is not a directory"),
    (lambda runs, tmp: [tmp, tmp / "out"], "holds no run record"),
    (lambda runs, tmp: [runs["bpe"], tmp / "out", "--step", "7"],
     "--step=7 is step 7, which .* has no checkpoint of"),
])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, args, message):
    result = _run_export(*args(runs, tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert re.search(message, result.stderr)
    assert not (tmp_path / "out").exists()


def _finetune(corpus_dir, cache_dir, init_from: str, **model) -> Config:
    cfg = _config(corpus_dir, cache_dir, "bpe", False, kind="finetune", init_from=init_from)
    return replace(cfg, model=replace(cfg.model, **model),
                   train=replace(cfg.train, tokens=4 * 8 * 64, checkpoint_every_steps=1000))


def _start_loss(config: Config) -> float:
    """The loss of a finetune's initial parameters on its validation batches."""
    from scaling.stages.finetune import prepare

    stage = prepare(config).replicas[0].stage
    params = jax.tree_util.tree_map(jnp.asarray, stage.init_params())
    return float(jax.jit(jax.vmap(stage.loss_fn, in_axes=(None, 0)))(
        params, stage.eval_data).mean())


def test_a_run_starts_from_its_export_at_its_own_loss(runs, exported, corpus_dir, cache_dir,
                                                      tmp_path):
    from_run = _start_loss(_finetune(corpus_dir, cache_dir, str(runs["bpe"])))
    config = _finetune(corpus_dir, cache_dir, f"hf:{exported['bpe']}")
    assert _start_loss(config) == pytest.approx(from_run, abs=1e-5)
    summary = pretrain(config, tmp_path / "ft")
    assert summary["status"] == "completed"
    assert summary["parent_run"] == f"hf:{exported['bpe']}"
    assert summary["parent_vocab_padding"] == "restored"
    assert np.isfinite(pd.read_parquet(tmp_path / "ft" / "metrics.parquet")["val_loss"]).all()


def test_any_gpt2_without_our_padding_loses_little_mass_to_it(runs, exported, tmp_path):
    """A GPT-2 from elsewhere has no padding rows: each new one is the mean row, so the padding
    takes at most (320 - 300) / 300 of the real tokens' mass (Jensen)."""
    plain = tmp_path / "plain"
    shutil.copytree(exported["bpe"], plain)
    (plain / PADDING).unlink()
    checkpoint = read_checkpoint(plain)
    assert checkpoint.padding == "mean"
    cfg, _, tokenizer = _ours(runs["bpe"])
    ids = _window(tokenizer, cfg.n_ctx + 1, HELD_OUT[0])
    inputs, targets = jnp.asarray(ids[:, :-1]), jnp.asarray(ids[:, 1:])
    ours = token_losses(GPT(cfg).apply({"params": checkpoint.params}, inputs), targets)
    model = GPT2LMHeadModel.from_pretrained(plain).eval()
    with torch.no_grad():
        theirs = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(ids[:, :-1])).logits[0], torch.from_numpy(ids[0, 1:]),
            reduction="none").numpy()
    excess = np.asarray(ours[0]) - theirs
    assert (excess >= -1e-5).all() and (excess <= np.log1p(20 / 300) + 1e-5).all()


def test_a_checkpoint_of_another_shape_is_refused_naming_the_overrides(
        exported, corpus_dir, cache_dir, tmp_path):
    config = _finetune(corpus_dir, cache_dir, f"hf:{exported['bpe']}", n_layer=3, d_model=64)
    with pytest.raises(ConfigError, match=r"is a GPT-2 of model.n_layer=2 model.d_model=32 .*"
                       r"this run has model.n_layer=3 model.d_model=64 model.d_ff=256: "
                       r"add those overrides"):
        pretrain(config, tmp_path / "run")
    bad = tmp_path / "bad"
    shutil.copytree(exported["bpe"], bad)
    config_json = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config_json, "activation_function": "gelu"}))
    with pytest.raises(CheckpointFormatError, match="activation_function"):
        pretrain(_finetune(corpus_dir, cache_dir, f"hf:{bad}"), tmp_path / "run2")


def test_a_reward_model_is_refused_and_a_value_head_left_out():
    cfg = GPTConfig(vocab_size=256, n_layer=1, d_model=32, n_head=2, n_ctx=16, d_ff=128)
    params = init_params(cfg, 0)
    with pytest.raises(CheckpointFormatError, match="reward head"):
        gpt2_tensors(cfg, {**params, REWARD_HEAD: init_reward_head(cfg)})
    tensors, _ = gpt2_tensors(cfg, {**params, VALUE_HEAD: init_reward_head(cfg)})
    assert tensors.keys() == gpt2_tensors(cfg, params)[0].keys()


def test_gpt2model_names_read_as_gpt2lmheadmodel_names(exported, tmp_path):
    """The hub's original gpt2 files name tensors as GPT2Model does (h.0..., wte.weight)."""
    plain = tmp_path / "gpt2model"
    shutil.copytree(exported["bpe"], plain)
    tensors = load_file(plain / WEIGHTS)
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()},
              plain / WEIGHTS, metadata={"format": "pt"})
    ours, theirs = read_checkpoint(exported["bpe"]).params, read_checkpoint(plain).params
    jax.tree_util.tree_map(np.testing.assert_array_equal, ours, theirs)
