"""Hugging Face GPT-2 checkpoints: a run's model and tokenizer written as one, and read back.

The model is GPT-2 already (`scaling.model`: pre-LN blocks, tanh GELU, LayerNorm eps 1e-5,
learned positions, [in, out] kernels as GPT-2's Conv1D, the unembedding tied to `wte`), so a
checkpoint is a renaming: `h_{i}/attn/c_attn/kernel` is `transformer.h.{i}.attn.c_attn.weight`.
Layers stacked by `scan_layers` are unstacked first. The vocabulary is cut back from
`vocab_padded` to the tokenizer's: the padding rows are never drawn by our sampler, so the
exported model's next-token distribution is ours over the real tokens. They do sit in our
loss's normaliser, so they are kept beside the checkpoint in `vocab_padding.safetensors`
(ignored by `transformers`), and reading our own export back restores them exactly.

A checkpoint read here (`read_checkpoint`, for `stage.init_from=hf:DIR`) may be any GPT-2 on
disk: its shape comes from config.json, its weights from model.safetensors, its tokenizer from
tokenizer.json. Padding rows it lacks are each set to the mean of the real rows: a padding
logit is then the mean of the real logits, so by Jensen's inequality the padding together takes
at most (vocab_padded - vocab) / vocab of the real tokens' probability mass.

No torch here: weights are numpy arrays in and out of safetensors.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from safetensors.numpy import load_file, save_file
from tokenizers import decoders, models, pre_tokenizers

from scaling.console import UsageError
from scaling.data.tokenizer import EOS_TOKEN, BPETokenizer, BytesTokenizer, Tokenizer
from scaling.model import LN_EPS, REWARD_HEAD, VALUE_HEAD, GPTConfig, padded_vocab, unscanned

HF_PREFIX = "hf:"  # stage.init_from=hf:DIR names a Hugging Face checkpoint, not a run
WEIGHTS = "model.safetensors"
PADDING = "vocab_padding.safetensors"  # our padding rows, for an exact round trip
# GPT-2's names for the tanh approximation of GELU (ours); "gelu" is the exact erf form.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class CheckpointFormatError(UsageError):
    """A checkpoint this format cannot hold, or a directory that holds none: one line."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, as byte-level BPE spells bytes in its vocab."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable},
            **{b: chr(256 + i) for i, b in enumerate(others)}}


def bytes_tokenizer_json() -> tokenizers.Tokenizer:
    """`BytesTokenizer` as a `tokenizers` object: byte-level, one token per byte, id = byte
    value, no merges, so any text gives the same ids as UTF-8 bytes. Its eos is id 0, the NUL
    byte, spelt "Ā" (U+0100) as byte-level BPE spells byte 0."""
    table = bytes_to_unicode()
    hf = tokenizers.Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _hf_tokenizer(tokenizer: Tokenizer) -> tuple[tokenizers.Tokenizer, str]:
    """(the tokenizers object, its eos token's text) of either of our tokenizers."""
    if isinstance(tokenizer, BytesTokenizer):
        return bytes_tokenizer_json(), bytes_to_unicode()[tokenizer.eos_id]
    return tokenizer._hf, EOS_TOKEN


def write_tokenizer(tokenizer: Tokenizer, out_dir: Path, n_ctx: int) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json, as `AutoTokenizer`
    loads them (a `PreTrainedTokenizerFast` reading tokenizer.json as it is). The eos is bos,
    unk and pad too (GPT-2's habit); `split_special_tokens` makes the literal text
    "<|endoftext|>" ordinary text, as our tokenizer reads it."""
    hf, eos = _hf_tokenizer(tokenizer)
    hf.save(str(out_dir / "tokenizer.json"))
    special = {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
              "model_max_length": n_ctx, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, "split_special_tokens": True}
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", special)


def gpt2_config(cfg: GPTConfig, eos_id: int) -> dict[str, Any]:
    """config.json of `cfg` as `GPT2LMHeadModel`, its vocabulary the tokenizer's (unpadded)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.n_ctx, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
        "activation_function": "gelu_new", "layer_norm_epsilon": LN_EPS,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
        "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id,
        "dtype": "float32",
    }


def _layer_names(i: int) -> dict[str, tuple[str, ...]]:
    """HF name -> our parameter path, for block i."""
    ours = {}
    for part in ("ln_1", "ln_2", "ln_f"):
        ours[f"{part}.weight"], ours[f"{part}.bias"] = (part, "scale"), (part, "bias")
    for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        path = tuple(part.split("."))
        ours[f"{part}.weight"], ours[f"{part}.bias"] = (*path, "kernel"), (*path, "bias")
    return {f"transformer.h.{i}.{k}": (f"h_{i}", *v) for k, v in ours.items() if "ln_f" not in k}


def _names(n_layer: int) -> dict[str, tuple[str, ...]]:
    """Every HF GPT-2 tensor name (lm_head tied, so absent) -> our parameter path."""
    names = {"transformer.wte.weight": ("wte", "embedding"),
             "transformer.wpe.weight": ("wpe", "embedding"),
             "transformer.ln_f.weight": ("ln_f", "scale"),
             "transformer.ln_f.bias": ("ln_f", "bias")}
    for i in range(n_layer):
        names |= _layer_names(i)
    return names


def gpt2_tensors(cfg: GPTConfig, params: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Our parameters as GPT-2's state dict (float32, wte cut to the real vocabulary), and the
    padding rows cut off [vocab_padded - vocab, d_model]. Raises CheckpointFormatError for a
    reward model (a head GPT2LMHeadModel has no place for); a PPO value head is left out."""
    if REWARD_HEAD in params:
        raise CheckpointFormatError("a reward model (stage=reward) has a reward head that "
                                    "GPT2LMHeadModel cannot hold: export its parent instead")
    params = {k: v for k, v in params.items() if k != VALUE_HEAD}
    _, params = unscanned(cfg, params)
    tensors = {}
    for name, path in _names(cfg.n_layer).items():
        value = params
        for key in path:
            value = value[key]
        tensors[name] = np.ascontiguousarray(np.asarray(value, np.float32))
    wte = tensors["transformer.wte.weight"]
    tensors["transformer.wte.weight"] = np.ascontiguousarray(wte[:cfg.vocab_size])
    return tensors, np.ascontiguousarray(wte[cfg.vocab_size:])


def write_checkpoint(out_dir: Path, cfg: GPTConfig, params: dict, tokenizer: Tokenizer,
                     origin: dict[str, Any]) -> None:
    """A Hugging Face GPT-2 checkpoint of (cfg, params, tokenizer) in `out_dir` (created):
    config.json, generation_config.json, model.safetensors, vocab_padding.safetensors and the
    tokenizer files. `origin` (run, step) goes into the safetensors metadata."""
    tensors, padding = gpt2_tensors(cfg, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", **{k: str(v) for k, v in origin.items()}}
    save_file(tensors, str(out_dir / WEIGHTS), metadata=metadata)
    save_file({"wte_padding": padding}, str(out_dir / PADDING), metadata=metadata)
    _write_json(out_dir / "config.json", gpt2_config(cfg, tokenizer.eos_id))
    eos = tokenizer.eos_id
    _write_json(out_dir / "generation_config.json",
                {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos})
    write_tokenizer(tokenizer, out_dir, cfg.n_ctx)


@dataclass(frozen=True)
class Export:
    """What `export_run` wrote: where, from which run and step, and how long it took."""

    out_dir: Path
    run_dir: Path
    step: int
    n_params: int
    seconds: float


def export_run(run_dir: Path, out_dir: Path, step: str = "latest") -> Export:
    """Write the model of a run directory at `step` (latest, best or a number) and its
    tokenizer as a Hugging Face GPT-2 checkpoint in `out_dir`.

    Raises ConfigError (one line) for a directory without a run record or without that
    checkpoint, CheckpointFormatError for a model GPT-2's format cannot hold.
    """
    from scaling.config import ModelConfig
    from scaling.model import model_shape
    from scaling.stages.parent import load_run

    start = time.perf_counter()
    run = load_run(run_dir, step, step_key="--step")
    cfg = model_shape(ModelConfig(**run.summary["config"]["model"]), run.summary["vocab_size"])
    tokenizer = run.tokenizer_dataset().tokenizer
    write_checkpoint(out_dir, cfg, run.params, tokenizer,
                     {"scaling_run": run.run_id, "scaling_step": run.step})
    n_params = sum(np.asarray(p).size for p in load_file(str(out_dir / WEIGHTS)).values())
    return Export(out_dir, run_dir, run.step, n_params, time.perf_counter() - start)


@dataclass(frozen=True)
class Checkpoint:
    """A GPT-2 checkpoint read from disk: its shape (our ModelConfig's field names), our
    parameter tree (wte padded to vocab_padded) and its tokenizer."""

    directory: Path
    shape: dict[str, int]  # n_layer, d_model, n_head, n_ctx, d_ff
    params: dict
    tokenizer: Tokenizer
    tokenizer_kind: str  # bpe | bytes
    padding: str  # how the padding rows were set: restored | mean | none


def read_checkpoint(directory: Path) -> Checkpoint:
    """A GPT-2 checkpoint directory (config.json, model.safetensors, tokenizer.json) as our
    shape, parameters and tokenizer, for `stage.init_from=hf:DIR`.

    Raises CheckpointFormatError (one line) for a missing file, a model that is not GPT-2 or
    that differs from ours in a way a renaming cannot fix (exact GELU, another LayerNorm eps,
    an untied head), or weights of the wrong shapes.
    """
    where = f"{HF_PREFIX}{directory}"
    if not directory.is_dir():
        raise CheckpointFormatError(f"{where} is not a directory: expected a Hugging Face "
                                    "GPT-2 checkpoint (config.json, model.safetensors, "
                                    "tokenizer.json)")
    for name in ("config.json", WEIGHTS, "tokenizer.json"):
        if not (directory / name).is_file():
            raise CheckpointFormatError(f"{where} has no {name}: expected a Hugging Face "
                                        "GPT-2 checkpoint (config.json, model.safetensors, "
                                        "tokenizer.json)")
    config = json.loads((directory / "config.json").read_text("utf-8"))
    shape = _shape(config, where)
    tokenizer, kind = read_tokenizer(directory / "tokenizer.json", where)
    tensors = load_file(str(directory / WEIGHTS))
    params, padding = _params(tensors, shape, config, tokenizer.vocab_size, directory, where)
    return Checkpoint(directory, shape, params, tokenizer, kind, padding)


def _shape(config: dict[str, Any], where: str) -> dict[str, int]:
    """Our shape fields from a GPT-2 config.json; refuses what our model does not compute."""
    if config.get("model_type") != "gpt2":
        raise CheckpointFormatError(
            f"{where}: config.json's model_type is {config.get('model_type')!r}, expected "
            "'gpt2' (the architecture scaling's model computes)")
    checks = [("activation_function", config.get("activation_function", "gelu_new"),
               TANH_GELU, "the tanh GELU"),
              ("layer_norm_epsilon", config.get("layer_norm_epsilon", 1e-5), (LN_EPS,),
               f"LayerNorm eps {LN_EPS}"),
              ("scale_attn_weights", config.get("scale_attn_weights", True), (True,),
               "attention scaled by 1/sqrt(head size)"),
              ("scale_attn_by_inverse_layer_idx",
               config.get("scale_attn_by_inverse_layer_idx", False), (False,),
               "no per-layer attention scaling"),
              ("tie_word_embeddings", config.get("tie_word_embeddings", True), (True,),
               "the unembedding tied to wte")]
    for key, value, allowed, meaning in checks:
        if value not in allowed:
            raise CheckpointFormatError(f"{where}: config.json's {key} is {value!r}; scaling's "
                                        f"model has {meaning}")
    d_model = config["n_embd"]
    return {"n_layer": config["n_layer"], "d_model": d_model, "n_head": config["n_head"],
            "n_ctx": config["n_positions"], "d_ff": config.get("n_inner") or 4 * d_model}


def read_tokenizer(path: Path, where: str) -> tuple[Tokenizer, str]:
    """The tokenizer of a tokenizer.json as ours, and its kind: the 256 byte tokens of
    `bytes_tokenizer_json` are `BytesTokenizer`; any other needs an <|endoftext|> token (the
    eos) and is byte-level BPE. Raises CheckpointFormatError for one without it."""
    hf = tokenizers.Tokenizer.from_file(str(path))
    table = bytes_to_unicode()
    if hf.get_vocab(with_added_tokens=True) == {table[b]: b for b in range(256)}:
        return BytesTokenizer(), "bytes"
    if hf.token_to_id(EOS_TOKEN) is None:
        raise CheckpointFormatError(f"{where}: tokenizer.json has no {EOS_TOKEN} token, the "
                                    "eos that separates documents in scaling's data")
    return BPETokenizer(hf), "bpe"


def _params(tensors: dict[str, np.ndarray], shape: dict[str, int], config: dict[str, Any],
            vocab: int, directory: Path, where: str) -> tuple[dict, str]:
    """Our parameter tree (unscanned layers) from GPT-2's state dict, wte padded to a
    multiple of 64 rows: with our own padding rows where saved, else the real rows' mean."""
    # GPT2Model's names (the hub's original gpt2 files) lack GPT2LMHeadModel's "transformer."
    tensors = {k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}": v
               for k, v in tensors.items()}
    d, n_ctx, d_ff = shape["d_model"], shape["n_ctx"], shape["d_ff"]
    expected = {"transformer.wte.weight": None, "transformer.wpe.weight": (n_ctx, d),
                "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
    for i in range(shape["n_layer"]):
        h = f"transformer.h.{i}"
        expected |= {f"{h}.ln_1.weight": (d,), f"{h}.ln_1.bias": (d,),
                     f"{h}.ln_2.weight": (d,), f"{h}.ln_2.bias": (d,),
                     f"{h}.attn.c_attn.weight": (d, 3 * d), f"{h}.attn.c_attn.bias": (3 * d,),
                     f"{h}.attn.c_proj.weight": (d, d), f"{h}.attn.c_proj.bias": (d,),
                     f"{h}.mlp.c_fc.weight": (d, d_ff), f"{h}.mlp.c_fc.bias": (d_ff,),
                     f"{h}.mlp.c_proj.weight": (d_ff, d), f"{h}.mlp.c_proj.bias": (d,)}
    for name, want in expected.items():
        if name not in tensors:
            raise CheckpointFormatError(f"{where}: {WEIGHTS} has no {name}")
        if want is not None and tensors[name].shape != want:
            raise CheckpointFormatError(f"{where}: {name} is {list(tensors[name].shape)}, "
                                        f"config.json's shape gives {list(want)}")
    wte, padding = _padded_wte(tensors, config, vocab, d, directory, where)
    params: dict = {}
    for name, path in _names(shape["n_layer"]).items():
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = wte if name == "transformer.wte.weight" else np.asarray(
            tensors[name], np.float32)
    return params, padding


def _padded_wte(tensors: dict[str, np.ndarray], config: dict[str, Any], vocab: int, d: int,
                directory: Path, where: str) -> tuple[np.ndarray, str]:
    wte = np.asarray(tensors["transformer.wte.weight"], np.float32)
    rows, padded = wte.shape[0], padded_vocab(vocab)
    if wte.shape[1] != d or not vocab <= rows <= padded or config.get("vocab_size", rows) != rows:
        raise CheckpointFormatError(
            f"{where}: transformer.wte.weight is {list(wte.shape)} with config.json's "
            f"vocab_size {config.get('vocab_size')}; the tokenizer has {vocab} tokens, so "
            f"expected [{vocab}..{padded}, {d}]")
    head = tensors.get("lm_head.weight")
    if head is not None and not np.array_equal(head, tensors["transformer.wte.weight"]):
        raise CheckpointFormatError(f"{where}: lm_head.weight differs from "
                                    "transformer.wte.weight; scaling's unembedding is tied")
    if rows == padded:
        return wte, "none" if rows == vocab else "restored"
    saved = directory / PADDING
    if saved.is_file():
        extra = load_file(str(saved)).get("wte_padding")
        if extra is not None and extra.shape == (padded - rows, d):
            return np.concatenate([wte, extra.astype(np.float32)]), "restored"
    mean = wte[:vocab].mean(axis=0, keepdims=True)
    return np.concatenate([wte, np.repeat(mean, padded - rows, axis=0)]), "mean"


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", "utf-8")

