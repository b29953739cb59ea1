"""Typed run configuration: the Hydra schema, and the checks Hydra's types cannot express.

The dataclasses are registered in Hydra's ConfigStore, so an unknown key or a wrong type fails
at launch with the key's name. An int field also takes a float that is a whole number
(`train.tokens=1e6`), as scaling papers write D. `validate` then checks values (positive sizes,
divisibility, budgets) and raises `ConfigError` naming the field, before any data is read or JAX
is touched.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import math
import re
import textwrap
import tokenize
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from types import MappingProxyType
from typing import Any, get_type_hints

from scaling.console import UsageError, listing, suggestion


class ConfigError(UsageError):
    """A config value is invalid; the message names the field and what was expected."""


@dataclass
class ModelConfig:
    """Decoder-only Transformer shape (GPT-2 architecture)."""

    n_layer: int = 2  # Transformer blocks
    d_model: int = 64  # width of the residual stream
    n_head: int = 2  # attention heads, a divisor of d_model
    n_ctx: int = 64  # context length in tokens
    d_ff: int | None = None  # None: 4 * d_model
    dtype: str = "auto"  # compute: auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16
    attention: str = "auto"  # auto (cudnn on GPU with bf16, else xla) | xla | cudnn
    remat: str = "none"  # recompute blocks in the backward pass: none | full | dots (keep matmuls)
    scan_layers: bool = False  # one lax.scan over stacked blocks (params under h/) instead of h_{i}
    loss_chunk: int = 0  # tokens per chunk of a fused unembedding + loss; 0: all logits at once
    # false: bidirectional attention, the causal mask off (a masked LM: stage=mlm sets it)
    causal: bool = True

    @property
    def ff_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model


@dataclass
class DataConfig:
    """Where the tokens come from: a corpus, a tokenizer, a validation split, a cache."""

    # stdlib (this interpreter's standard library source) | python (stdlib + installed
    # packages) | prose (the docstrings and comments of half of python's files, and the
    # documentation topics) | code (the other half, without docstrings and comments) | files;
    # prompt -> response pairs for stage=sft and rl: sft_stdlib (the standard library's documented
    # functions: signature + docstring -> body) | jsonl; for stage=reward: comparisons (JSONL
    # files of prompt, chosen, rejected, as scaling-compare writes them) | policy_comparisons
    # (the run samples them from data.policy and gold-labels them, once: cached)
    source: str = "stdlib"
    paths: list[str] = field(default_factory=list)  # globs, for source=files, jsonl, comparisons
    # source=hf: a dataset on disk (scaling.data.user): a directory of `datasets`' save_to_disk,
    # a Parquet, Arrow or JSON Lines file, a directory of them, or a glob
    path: str | None = None
    text_column: str = "text"  # source=hf: the column (JSON Lines: the field) holding the text
    # A second corpus, only evaluated on (transfer_loss): none | prose (the Python
    # documentation's prose, pydoc_data) | files
    transfer: str = "none"
    transfer_paths: list[str] = field(default_factory=list)  # globs, for transfer=files
    tokenizer: str = "bpe"  # bpe (byte-level BPE trained on the train split) | bytes
    vocab_size: int = 4096  # BPE vocabulary size (the bytes tokenizer is always 256)
    val_fraction: float = 0.05  # share of documents (pairs: files; comparisons: prompts) held out
    cache_dir: str | None = None  # None: $SCALING_CACHE, else ~/.cache/scaling
    # data=policy_comparisons (stage=reward, dpo): the SFT run whose samples are compared, as
    # scaling-compare draws and labels them; collected once per (policy checkpoint, settings)
    # into the data cache and shared by every run that asks (scaling.rlhf.policy_data)
    policy: str | None = None
    comparison_samples: int = 4  # samples per prompt; every pair of unequal gold is labelled
    # the policy's prompts: train | val | N | train:N | val:N (N spread evenly over those that fit)
    comparison_prompts: str = "train"
    comparison_gold: str = "sft_body"  # the gold reward that scores and labels (scaling.rlhf.gold)
    comparison_max_new_tokens: int = 0  # a sample's length limit, its eos included; 0: n_ctx // 2
    comparison_label_temperature: float = 0.0  # 0: the higher gold wins; T: σ(Δgold / T)
    comparison_seed: int = 0  # the same seed, the same samples and labels


@dataclass
class DistributedConfig:
    """One run across processes (jax.distributed; null keys: Slurm's; docs/distributed.md)."""

    # auto: join the other processes where num_processes > 1, or, with num_processes null,
    # where srun started several tasks (SLURM_STEP_NUM_TASKS > 1) | true | false: one process
    enabled: str = "auto"
    coordinator_address: str | None = None  # host:port where process 0 serves; null: Slurm's
    num_processes: int | None = None  # processes in the run; null: Slurm's SLURM_NTASKS
    process_id: int | None = None  # this process's rank in [0, num_processes); null: SLURM_PROCID
    local_device_ids: list[int] | None = None  # this process's devices; null: JAX's choice

    @property
    def mode(self) -> str:
        """`enabled` as auto | true | false (YAML and overrides read true and false as bools)."""
        return str(self.enabled).lower()


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. Defaults follow Kaplan et al. 2020 (Adam, warmup, cosine)."""

    # keys of older configs, and where they went (not fields: what an error says of them)
    moved_keys = MappingProxyType(
        {"warmup_fraction": "train.warmup (a fraction of the steps: train.warmup=0.05)"})

    tokens: int = 200_000  # token budget D; steps = tokens // (batch_size * n_ctx)
    budget: float | None = None  # compute budget C (FLOPs) of an IsoFLOP run; see sweeps/isoflop*
    batch_size: int = 16  # sequences per step
    seed: int = 0  # initialisation and data order
    lr: float | None = None  # None: Kaplan's size rule 0.003239 - 0.0001395 * ln(N)
    # the learning rate after warmup: cosine (decays over the whole run, Kaplan's) | wsd
    # (warmup-stable-decay, Hägele et al. 2024: the peak held, then a decay over the last
    # train.cooldown_fraction of the steps) | constant (the peak held); docs/schedules.md
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1  # cosine and wsd decay to this fraction of the peak (Hägele: 0)
    # linear warmup from zero: a fraction of the steps (a number < 1: 0.05), a token count (a
    # whole number >= 1: 2e5), or a rule: kaplan (a fixed 1e5 tokens whatever the size: long,
    # as Kaplan's 3,000 steps were for small models) | porian (N tokens, N counted with the
    # unembedding as Porian et al. 2024: short and size-scaled)
    warmup: str = "0.05"
    cooldown_fraction: float = 0.2  # wsd: the share of the steps the final decay takes, in (0, 1)
    cooldown_shape: str = "linear"  # wsd: linear | sqrt (1 - sqrt, Hägele et al. 2024)
    # wsd: token counts D1 < D2 < ... <= train.tokens: one constant-LR trunk per run and a
    # cooldown branch from it ending at each Dk, each recorded as its own run; []: one run
    cooldowns: list[int] = field(default_factory=list)
    weight_decay: float = 0.1  # AdamW's decoupled weight decay
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.95  # Adam's second-moment decay
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    eval_count: int = 20  # log-spaced validation points (the last step is always one)
    eval_batches: int = 8  # validation batches per evaluation
    log_every_steps: int = 10  # progress updates (each one is a host sync)
    checkpoint_every_steps: int = 1000  # a checkpoint every this many steps,
    checkpoint_every_seconds: float = 600.0  # and every this much wall time, and at the end
    keep_checkpoints: int = 2  # the newest checkpoints kept
    grad_accum: int = 1  # micro-batches per step (batch_size / grad_accum sequences each)
    parallel: str = "none"  # none (one device) | dp (batch over all devices) | fsdp (params too)
    # record the gradient noise scale B_simple (tokens) at every evaluation, from this many
    # training batches split into micro-batches (McCandlish et al. 2018); 0: off
    noise_scale_batches: int = 0
    # stage=pretrain|mlm: also score, at every evaluation, the held-out tokens BERT's fixed
    # validation corruption at this rate chooses (each window's first left out), the same tokens
    # for both objectives: masked_positions_loss (docs/mlm.md); null: off
    eval_mask_rate: float | None = None
    # K same-shape models trained at once, vmapped in one step (seeds seed..seed+K-1), each
    # recorded as its own run; see `replica_configs`
    replicas: int = 1
    replica_lr_scales: list[float] = field(default_factory=list)  # []: all at the peak LR; else K
    compile_cache: bool = True  # persistent XLA compilation cache, shared by runs of the same shape
    compile_cache_dir: str | None = None  # None: <data cache root>/jax
    # live logs beside each run's record: tensorboard (event files in <run dir>/tb, a sweep
    # directory is a --logdir) | wandb (optional: pip install wandb; offline unless WANDB_MODE
    # says otherwise, files in <run dir>/wandb); []: none
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    # one run across several processes (multi-process JAX): train.distributed.* below
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass
class FreezeConfig:
    """Parameters a fine-tuning stage leaves as its parent trained them."""

    embeddings: bool = False  # the token and position embeddings (wte, wpe; wte is also the head)
    blocks: int = 0  # the lowest k Transformer blocks


@dataclass
class StageConfig:
    """What kind of run this is: its data, loss and initialisation for the shared loop."""

    moved_keys = MappingProxyType(  # keys of older configs, and where they went
        {"schedule": "train.schedule (cosine | wsd | constant, for every stage)"})

    kind: str = "pretrain"  # pretrain | finetune | sft | reward | dpo | rl | mlm
    # a run directory to start from: its parameters (stage.init_step) and its tokenizer; null
    # for a random initialisation (pretrain)
    init_from: str | None = None
    init_step: str = "latest"  # latest | best (its best-validation step, if kept) | a step
    freeze: FreezeConfig = field(default_factory=FreezeConfig)  # parts kept as the parent left them
    beta: float = 0.1  # stage=dpo: DPO's β, how far the policy may move from its reference
    # stage=dpo: held-out SFT prompts of the parent sampled at each evaluation for gold_reward
    # (sft_body) and a sampled kl_to_ref; 0: none
    gold_samples: int = 0
    # stage=rl (PPO; TRL's names): the proxy reward model, a stage=reward run directory
    reward_from: str | None = None
    kl_coef: float = 0.05  # the per-token KL penalty's coefficient, β of r - β·KL (0: none)
    clip_range: float = 0.2  # PPO's ε, for the policy's ratio and the value's change
    vf_coef: float = 0.1  # the value loss's weight in the loss
    gamma: float = 1.0  # GAE's discount per token
    lam: float = 0.95  # GAE's λ
    ppo_epochs: int = 4  # passes over each rollout
    minibatches: int = 1  # optimizer steps per pass: rollout_prompts / minibatches rows each
    rollout_prompts: int = 64  # train prompts sampled (one response each) per rollout
    max_new_tokens: int = 64  # a response's length limit, its eos included
    gold: str = "sft_body"  # the gold reward recorded at each evaluation (scaling.rlhf.gold)
    # stage=mlm (BERT's masked LM): the share of each window's positions the loss predicts; of
    # those 80 % become [MASK], 10 % a random token, 10 % stay (Devlin et al. 2019)
    mask_rate: float = 0.15
    # stage=mlm: may start from a causal run (stage.init_from), its objective changed
    allow_objective_change: bool = False


# What each stage reads: its data sources, and whether it starts from a parent run.
STAGE_SOURCES = {"pretrain": ("stdlib", "python", "prose", "code", "files", "hf"),
                 "finetune": ("stdlib", "python", "prose", "code", "files", "hf"),
                 "sft": ("sft_stdlib", "jsonl"),
                 "reward": ("comparisons", "policy_comparisons"),
                 "dpo": ("comparisons", "policy_comparisons"),
                 "rl": ("sft_stdlib", "jsonl"),
                 "mlm": ("stdlib", "python", "prose", "code", "files")}
STAGES_FROM_PARENT = ("finetune", "sft", "reward", "dpo", "rl")
STAGES_MAYBE_FROM_PARENT = ("mlm",)  # a random initialisation, or stage.init_from a run
MASKED_STAGES = ("mlm",)  # bidirectional models (model.causal=false), every other stage causal
# A run's largest vocabulary, data.vocab_size's cap: a masked LM's [MASK] token must fit too.
MAX_VOCAB = 65535
PATH_SOURCES = ("files", "jsonl", "comparisons")  # the sources that read data.paths
LOGGERS = ("tensorboard", "wandb")  # train.loggers' choices
# Seeds go to NumPy (non-negative only) and JAX (int64 at most): the 32-bit seeds both take.
SEED_LIMIT = 2**32
SEEDS = "an integer in [0, 2**32)"
# Evaluations are placed by np.geomspace(1, steps, train.eval_count) before the first step,
# several arrays of that length at once: some 30 MB at this cap, tens of GB at 1e9.
MAX_EVALS = 10**6


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage: StageConfig = field(default_factory=StageConfig)


def field_comments(schema: type) -> dict[str, str]:
    """Each field's comment in the schema's source: the comment lines right above it, then the
    one after it on its line (what `--help` says of the key)."""
    names, comments, above = {f.name for f in fields(schema)}, {}, []
    for line in inspect.getsource(schema).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        match = re.match(r"(\w+)\s*:", text)
        if match and match.group(1) in names:
            tokens = tokenize.generate_tokens(io.StringIO(text).readline)
            trailing = [t.string.lstrip("#").strip() for t in tokens
                        if t.type == tokenize.COMMENT]
            comments[match.group(1)] = " ".join(above + trailing)
        above = []
    return comments


def _default(f: Any) -> Any:
    value = f.default_factory() if f.default_factory is not MISSING else f.default
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else value


def key_help(schema: type = Config, prefix: str = "") -> list[str]:
    """Every key of `schema` as `  key=default  comment`, each section headed by its
    docstring: the keys `--help` lists, from the schema's own comments."""
    lines, width = [], 34
    comments = field_comments(schema)
    if prefix:
        lines.append(f"{prefix.rstrip('.')}: {inspect.getdoc(schema)}")
    for f in fields(schema):
        kind = get_type_hints(schema)[f.name]
        if is_dataclass(kind):
            lines += key_help(kind, f"{prefix}{f.name}.")
            continue
        key = f"  {prefix}{f.name}={_default(f)}"
        lines += textwrap.wrap(f"{key:<{width}} {comments.get(f.name, '')}", 100,
                               subsequent_indent=" " * (width + 1))
    return lines


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore as `base_config` (conf/config.yaml extends it), its
    int fields taking whole-number floats (`accept_whole_floats`)."""
    from hydra.core.config_store import ConfigStore

    accept_whole_floats()
    ConfigStore.instance().store(name="base_config", node=Config)


def accept_whole_floats() -> None:
    """Let every int config field take a float that is a whole number: 1e6 is 1000000.

    Hydra's override grammar and OmegaConf's YAML read `1e6` and `2.5e5` as floats, and
    OmegaConf's IntegerNode refuses any float, so `train.tokens=1e6` (D as scaling papers write
    it) would stop the launch. OmegaConf has no hook for a type's conversion, so this wraps
    IntegerNode's converter: the one place every int value passes, from the command line, a sweep's
    `hydra.sweeper.params`, a study's grids or a YAML file, before `--cfg job` prints it or a run
    directory is named after it. A fraction (`1.5e0`) is still refused there, naming the field.
    """
    from omegaconf.errors import ValidationError
    from omegaconf.nodes import IntegerNode

    convert = IntegerNode._validate_and_convert_impl
    if getattr(convert, "accepts_whole_floats", False):
        return

    def validate_and_convert(node: IntegerNode, value: Any) -> int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValidationError("Value $VALUE is not a whole number: an int field takes "
                                      "1000000, 1e6 or 2.5e5, not a fraction")
            value = int(value)
        return convert(node, value)

    validate_and_convert.accepts_whole_floats = True
    IntegerNode._validate_and_convert_impl = validate_and_convert


def reject_unknown_keys(node: Mapping[str, Any], schema: type, prefix: str = "") -> None:
    """Raise ConfigError for any key in `node` that the dataclass `schema` does not declare."""
    declared = get_type_hints(schema)
    for key in node:
        if key in getattr(schema, "moved_keys", {}):
            raise ConfigError(f"{prefix}{key} is not a config key any more: it moved to "
                              f"{schema.moved_keys[key]}")
        if key not in declared:
            hint = (suggestion(key, list(declared), prefix) or
                    f"; {schema.__name__} has {listing([prefix + name for name in declared])}")
            raise ConfigError(f"{prefix}{key} is not a config key{hint}")
        if is_dataclass(declared[key]):
            reject_unknown_keys(node[key], declared[key], f"{prefix}{key}.")


def from_hydra(cfg: Mapping[str, Any]) -> Config:
    """Hydra's composed job config (without its `hydra` node) as the typed, validated Config:
    what `scaling-train` checks before anything is read or trained. Raises ConfigError, or
    OmegaConf's error, naming the first bad key."""
    from omegaconf import OmegaConf

    reject_unknown_keys(cfg, Config)  # `+model.new_key=1` gets past Hydra's struct check
    return validate(OmegaConf.to_object(cfg))


SCHEDULES = ("cosine", "wsd", "constant")
COOLDOWN_SHAPES = ("linear", "sqrt")
# train.warmup=kaplan: one fixed warmup for every model size and run length, as Kaplan et al.
# 2020 warmed up for 3,000 steps (1.57e9 tokens) whatever the model. Taken at our scale as 1e5
# tokens: 10 % of a 1e6-token CPU run, and most or all of the smallest models' IsoFLOP runs,
# the regime where Porian et al. 2024 found the long warmup biased N_opt (docs/schedules.md).
KAPLAN_WARMUP_TOKENS = 100_000
WARMUP_RULES = ("kaplan", "porian")


@dataclass(frozen=True)
class Warmup:
    """`train.warmup` read: a `fraction` of the steps, a count of `tokens`, or a rule."""

    kind: str  # fraction | tokens | kaplan | porian
    value: float = 0.0  # the fraction, or the tokens; 0 for a rule


def parse_warmup(text: str) -> Warmup:
    """`train.warmup` as a `Warmup`: a number < 1 is a fraction of the steps, a whole number >= 1
    a token count (`2e5` and `200000.0` as well), a name one of WARMUP_RULES.

    Raises ConfigError naming train.warmup for anything else (a negative number, a fractional
    token count, an unknown rule)."""
    text = str(text).strip()
    if text in WARMUP_RULES:
        return Warmup(text)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    _check(math.isfinite(value) and value >= 0 and (value < 1 or value.is_integer()),
           "train.warmup", text, "a fraction of the steps in [0, 1), a whole number of tokens, "
           f"or a rule: {', '.join(WARMUP_RULES)}")
    return Warmup("fraction", value) if value < 1 else Warmup("tokens", value)


def cooldown_start(fraction: float, total_steps: int) -> int:
    """The step after which a `wsd` run of `total_steps` decays: its last
    round(fraction * total_steps) steps (train.cooldown_fraction) are its cooldown."""
    return total_steps - round(fraction * total_steps)


def branch_steps(cooldowns: list[int], tokens_per_step: int,
                 fraction: float) -> tuple[int, list[tuple[int, int]]]:
    """(the trunk's steps, [(start, end) of each branch]) for WSD cooldown branches ending at
    `cooldowns` tokens (`scaling.branches`), each cooling down from `cooldown_start`; the trunk
    runs to the last branch's start."""
    spans = [(cooldown_start(fraction, end), end)
             for end in (tokens // tokens_per_step for tokens in cooldowns)]
    return spans[-1][0], spans


def kaplan_lr(n_nonembed: int) -> float:
    """Kaplan et al. 2020 eq. D.1: the peak learning rate that worked best at size N."""
    return 0.003239 - 0.0001395 * math.log(n_nonembed)


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: expected {expected}.")


def validate(cfg: Config) -> Config:
    """Check values Hydra's types cannot; raise ConfigError naming the first bad field."""
    m, d, t = cfg.model, cfg.data, cfg.train
    for name in ("n_layer", "d_model", "n_head", "n_ctx"):
        _check(getattr(m, name) > 0, f"model.{name}", getattr(m, name), "a positive integer")
    _check(m.d_ff is None or m.d_ff > 0, "model.d_ff", m.d_ff, "a positive integer or null")
    _check(
        m.d_model % m.n_head == 0,
        "model.n_head",
        m.n_head,
        f"a divisor of model.d_model={m.d_model}",
    )
    _check(m.dtype in ("auto", "float32", "bfloat16"), "model.dtype", m.dtype,
           "one of auto, float32, bfloat16")
    _check(m.attention in ("auto", "xla", "cudnn"), "model.attention", m.attention,
           "one of auto, xla, cudnn")
    _check(m.remat in ("none", "full", "dots"), "model.remat", m.remat, "one of none, full, dots")

    _validate_stage(cfg)
    _check(d.source not in PATH_SOURCES or len(d.paths) > 0, "data.paths", d.paths,
           f"at least one path or glob when data={d.source}")
    # Paths that no source reads would train on another corpus without a word.
    readers = " or ".join(f"data={s}" for s in PATH_SOURCES
                          if s in STAGE_SOURCES.get(cfg.stage.kind, ()))
    _check(d.source in PATH_SOURCES or not d.paths, "data.paths", d.paths,
           f"empty with data={d.source}, which reads no paths: add {readers} to train on them")
    _check(d.source != "hf" or bool(d.path), "data.path", d.path,
           "the dataset data=hf reads: a save_to_disk directory, or Parquet or JSONL files")
    _check(d.source == "hf" or d.path is None, "data.path", d.path,
           f"null with data={d.source}, which reads no dataset (data=hf does)")
    _check(bool(d.text_column), "data.text_column", d.text_column, "a column name")
    _check(d.transfer in ("none", "prose", "files"), "data.transfer", d.transfer,
           "one of none, prose, files")
    _check(d.transfer != "files" or len(d.transfer_paths) > 0, "data.transfer_paths",
           d.transfer_paths, "at least one path or glob when data.transfer=files")
    _check(d.transfer == "files" or not d.transfer_paths, "data.transfer_paths",
           d.transfer_paths, f"empty with data.transfer={d.transfer}, which reads no paths: add "
           "data.transfer=files to score these files")
    _validate_policy_data(d)
    _check(d.tokenizer in ("bpe", "bytes"), "data.tokenizer", d.tokenizer, "one of bpe, bytes")
    _check(257 <= d.vocab_size <= MAX_VOCAB, "data.vocab_size", d.vocab_size,
           f"an integer in [257, {MAX_VOCAB}] for the BPE tokenizer")
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction,
           "a fraction strictly between 0 and 1")

    tokens_per_step = t.batch_size * m.n_ctx
    _check(t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
    _check(
        t.tokens >= tokens_per_step,
        "train.tokens",
        t.tokens,
        f"at least one batch, train.batch_size * model.n_ctx = {tokens_per_step} tokens",
    )
    _check(cfg.stage.kind not in ("reward", "dpo") or t.tokens >= 2 * tokens_per_step,
           "train.tokens", t.tokens, f"at least one batch of comparisons with "
           f"stage={cfg.stage.kind}, 2 * "
           f"train.batch_size * model.n_ctx = {2 * tokens_per_step} tokens (two windows each)")
    _check(0 <= t.seed < SEED_LIMIT, "train.seed", t.seed, SEEDS)
    _check(t.budget is None or t.budget > 0, "train.budget", t.budget,
           "a positive number of FLOPs or null")
    _check(t.lr is None or t.lr > 0, "train.lr", t.lr, "a positive number or null")
    _check(0.0 <= t.min_lr_ratio <= 1.0, "train.min_lr_ratio", t.min_lr_ratio, "a value in [0, 1]")
    _validate_schedule(cfg)
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a non-negative number")
    _check(0.0 <= t.beta1 < 1.0, "train.beta1", t.beta1, "a value in [0, 1)")
    _check(0.0 <= t.beta2 < 1.0, "train.beta2", t.beta2, "a value in [0, 1)")
    _check(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "a non-negative number (0: off)")
    for name in ("eval_count", "eval_batches", "log_every_steps", "checkpoint_every_steps",
                 "keep_checkpoints"):
        _check(getattr(t, name) > 0, f"train.{name}", getattr(t, name), "a positive integer")
    _check(t.eval_count <= MAX_EVALS, "train.eval_count", t.eval_count,
           f"at most {MAX_EVALS:,} evaluations")
    _check(t.grad_accum > 0 and t.batch_size % t.grad_accum == 0, "train.grad_accum",
           t.grad_accum, f"a positive divisor of train.batch_size={t.batch_size}")
    micro_tokens = t.batch_size // t.grad_accum * m.n_ctx
    _check(m.loss_chunk >= 0 and (m.loss_chunk == 0 or micro_tokens % m.loss_chunk == 0),
           "model.loss_chunk", m.loss_chunk,
           f"0 or a divisor of the {micro_tokens} tokens per micro-batch "
           "(train.batch_size / train.grad_accum * model.n_ctx)")
    _check(t.parallel in ("none", "dp", "fsdp"), "train.parallel", t.parallel,
           "one of none, dp, fsdp")
    _check(all(name in LOGGERS for name in t.loggers), "train.loggers", t.loggers,
           f"a list of {', '.join(LOGGERS)}, or [] for none")
    if "wandb" in t.loggers and importlib.util.find_spec("wandb") is None:
        raise ConfigError("train.loggers=[wandb] needs the optional package wandb, which is not "
                          "installed: pip install wandb (WANDB_MODE=offline needs no account)")
    _check(t.replicas > 0, "train.replicas", t.replicas, "a positive integer")
    _check(
        len(t.replica_lr_scales) in (0, t.replicas) and all(s > 0 for s in t.replica_lr_scales),
        "train.replica_lr_scales", t.replica_lr_scales,
        f"[] (every replica at the peak LR) or train.replicas={t.replicas} positive multipliers "
        "of the peak LR, one per replica",
    )
    _check(t.replicas == 1 or t.parallel == "none", "train.replicas", t.replicas,
           f"1 with train.parallel={t.parallel}: replicas are vmapped on one device, not "
           "sharded (use train.parallel=none)")
    _check(t.noise_scale_batches >= 0, "train.noise_scale_batches", t.noise_scale_batches,
           "a non-negative integer (0: off)")
    _check(t.noise_scale_batches == 0 or t.batch_size % 2 == 0, "train.batch_size",
           t.batch_size, "an even number of sequences when train.noise_scale_batches > 0 "
           "(the noise scale compares half-batch and whole-batch gradients)")
    _check(t.checkpoint_every_seconds > 0, "train.checkpoint_every_seconds",
           t.checkpoint_every_seconds, "a positive number of seconds")
    _validate_distributed(t)
    return cfg


def _validate_distributed(t: TrainConfig) -> None:
    """train.distributed's keys, and the batch and placement against its processes: one line
    naming the first bad field. Each process has at least one device, so a micro-batch must
    split over the processes (`scaling.parallel` checks it against the devices too)."""
    dist = t.distributed
    _check(dist.mode in ("auto", "true", "false"), "train.distributed.enabled", dist.enabled,
           "one of auto, true, false")
    n, rank = dist.num_processes, dist.process_id
    _check(n is None or n >= 1, "train.distributed.num_processes", n,
           "a positive number of processes, or null (Slurm's SLURM_NTASKS)")
    _check(rank is None or (rank >= 0 and (n is None or rank < n)), "train.distributed.process_id",
           rank,
           f"a rank in [0, train.distributed.num_processes={n})" if n else
           "a non-negative rank, or null (Slurm's SLURM_PROCID)")
    if dist.mode == "false" or (n or 1) == 1:  # one process (or Slurm says, at run time)
        return
    _check(t.parallel != "none", "train.parallel", t.parallel,
           f"dp or fsdp with train.distributed.num_processes={n} (none trains on one device)")
    micro_batch = t.batch_size // t.grad_accum
    _check(micro_batch % n == 0, "train.batch_size", t.batch_size,
           f"a batch whose micro-batches (train.batch_size / train.grad_accum = {micro_batch} "
           f"sequences) split evenly over the train.distributed.num_processes={n} processes")


def _validate_policy_data(d: DataConfig) -> None:
    """data.policy and the comparison_* keys of data=policy_comparisons: one line naming the
    first bad field."""
    if d.source != "policy_comparisons":
        _check(d.policy is None, "data.policy", d.policy,
               f"null with data={d.source}, which samples no policy (data=policy_comparisons does)")
        return
    from scaling.rlhf.gold import GOLD_REWARDS

    _check(d.policy is not None, "data.policy", d.policy,
           "the SFT run directory whose samples data=policy_comparisons compares")
    _check(d.comparison_samples >= 2, "data.comparison_samples", d.comparison_samples,
           "at least 2 samples per prompt (a comparison is a pair of them)")
    _check(re.fullmatch(r"(train|val)(:[1-9]\d*)?|[1-9]\d*", d.comparison_prompts) is not None,
           "data.comparison_prompts", d.comparison_prompts,
           "train, val, a number N of train prompts, or train:N / val:N (N >= 1)")
    _check(d.comparison_gold in GOLD_REWARDS, "data.comparison_gold", d.comparison_gold,
           f"one of {', '.join(sorted(GOLD_REWARDS))}")
    _check(d.comparison_max_new_tokens >= 0, "data.comparison_max_new_tokens",
           d.comparison_max_new_tokens, "a positive number of tokens, or 0 for n_ctx // 2")
    _check(0 <= d.comparison_seed < SEED_LIMIT, "data.comparison_seed", d.comparison_seed, SEEDS)
    _check(d.comparison_label_temperature >= 0, "data.comparison_label_temperature",
           d.comparison_label_temperature, "0 (the higher gold wins) or a positive temperature")


def _validate_schedule(cfg: Config) -> None:
    """train.schedule, warmup and cooldowns: one line naming the first bad field."""
    t = cfg.train
    _check(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"one of {', '.join(SCHEDULES)}")
    parse_warmup(t.warmup)
    _check(0.0 < t.cooldown_fraction < 1.0, "train.cooldown_fraction", t.cooldown_fraction,
           "a fraction strictly between 0 and 1")
    _check(t.cooldown_shape in COOLDOWN_SHAPES, "train.cooldown_shape", t.cooldown_shape,
           f"one of {', '.join(COOLDOWN_SHAPES)}")
    if not t.cooldowns:
        return
    _check(t.schedule == "wsd", "train.cooldowns", t.cooldowns,
           f"[] with train.schedule={t.schedule}: cooldown branches need train.schedule=wsd")
    _check(all(a < b for a, b in zip(t.cooldowns, t.cooldowns[1:], strict=False)),
           "train.cooldowns", t.cooldowns, "token counts in increasing order")
    _check(t.cooldowns[0] > 0 and t.cooldowns[-1] <= t.tokens, "train.cooldowns", t.cooldowns,
           f"token counts in (0, train.tokens={t.tokens}]")
    tokens_per_step = t.batch_size * cfg.model.n_ctx
    for tokens in t.cooldowns:
        steps = tokens // tokens_per_step
        _check(0 < cooldown_start(t.cooldown_fraction, steps) < steps, "train.cooldowns",
               t.cooldowns,
               f"token counts whose cooldown (train.cooldown_fraction={t.cooldown_fraction} of "
               f"their steps of {tokens_per_step} tokens) is at least one step and starts after "
               f"step 0; {tokens} is {steps} steps")
    _check(t.replicas == 1 and not t.replica_lr_scales, "train.replicas", t.replicas,
           "1 with train.cooldowns (a trunk and its branches are one model each)")
    _check(cfg.stage.kind == "pretrain", "train.cooldowns", t.cooldowns,
           f"[] with stage={cfg.stage.kind}: cooldown branches are built for pretraining")


def _validate_stage(cfg: Config) -> None:
    s, d = cfg.stage, cfg.data
    _check(s.kind in STAGE_SOURCES, "stage.kind", s.kind, f"one of {', '.join(STAGE_SOURCES)}")
    sources = STAGE_SOURCES[s.kind]
    _check(d.source in sources, "data.source", d.source,
           f"one of {', '.join(sources)} for stage={s.kind}")
    if s.kind in STAGES_FROM_PARENT:
        _check(s.init_from is not None, "stage.init_from", s.init_from,
               f"the run directory stage={s.kind} starts from")
    elif s.kind not in STAGES_MAYBE_FROM_PARENT:
        _check(s.init_from is None, "stage.init_from", s.init_from,
               f"null for stage={s.kind}, which starts from a random initialisation")
    _check(s.init_step in ("latest", "best") or s.init_step.isdigit(), "stage.init_step",
           s.init_step, "latest, best or a checkpoint step")
    _check(s.beta > 0, "stage.beta", s.beta, "a positive number (DPO's β)")
    _check(s.gold_samples >= 0, "stage.gold_samples", s.gold_samples,
           "a non-negative number of prompts")
    _check(s.kind == "rl" or s.reward_from is None, "stage.reward_from", s.reward_from,
           f"null for stage={s.kind}, which reads no reward model")
    if s.kind == "rl":
        _validate_rl(cfg)
    _validate_mlm(cfg)
    _check(s.freeze.blocks >= 0, "stage.freeze.blocks", s.freeze.blocks,
           "a non-negative number of blocks")
    _check(s.freeze.blocks <= cfg.model.n_layer, "stage.freeze.blocks", s.freeze.blocks,
           f"at most model.n_layer={cfg.model.n_layer}")
    _check(s.freeze.blocks == 0 or not cfg.model.scan_layers, "stage.freeze.blocks",
           s.freeze.blocks, "0 with model.scan_layers=true (its blocks are one stacked array)")


def _validate_mlm(cfg: Config) -> None:
    """stage=mlm's keys, train.eval_mask_rate, and model.causal against the stage: one line
    naming the first bad field. A causal LM with bidirectional attention would see the token
    it predicts."""
    s, m, d = cfg.stage, cfg.model, cfg.data
    masked = s.kind in MASKED_STAGES
    _check(m.causal != masked, "model.causal", m.causal,
           "false with stage=mlm (a masked LM reads both sides: conf/stage/mlm.yaml sets it)"
           if masked else f"true with stage={s.kind}, which predicts each next token (only "
           "stage=mlm trains a bidirectional model)")
    _check(0.0 < s.mask_rate < 1.0, "stage.mask_rate", s.mask_rate,
           "a fraction strictly between 0 and 1 (BERT's 0.15)")
    _check(not s.allow_objective_change or (masked and s.init_from is not None),
           "stage.allow_objective_change", s.allow_objective_change,
           "false unless stage=mlm starts from a causal run (stage.init_from)")
    rate = cfg.train.eval_mask_rate
    _check(rate is None or 0.0 < rate < 1.0, "train.eval_mask_rate", rate,
           "a fraction strictly between 0 and 1 (BERT's 0.15), or null (off)")
    _check(rate is None or s.kind in ("pretrain", "mlm"), "train.eval_mask_rate", rate,
           f"null with stage={s.kind}: the masked-positions score is built for stage=pretrain "
           "and stage=mlm")
    if masked:
        _check(d.tokenizer == "bytes" or d.vocab_size < MAX_VOCAB, "data.vocab_size",
               d.vocab_size, f"at most {MAX_VOCAB - 1} with stage=mlm: its [MASK] token takes "
               f"the id after the tokenizer's last, and a run's vocabulary is at most {MAX_VOCAB}")
        _check(cfg.train.noise_scale_batches == 0, "train.noise_scale_batches",
               cfg.train.noise_scale_batches, "0 with stage=mlm (measured on next-token batches)")


def _validate_rl(cfg: Config) -> None:
    """PPO's settings (stage=rl), each against its range and the model and budget."""
    s, t, n_ctx = cfg.stage, cfg.train, cfg.model.n_ctx
    _check(s.reward_from is not None, "stage.reward_from", s.reward_from,
           "the stage=reward run directory whose reward model stage=rl optimises")
    _check(s.kl_coef >= 0, "stage.kl_coef", s.kl_coef, "a non-negative number (0: no penalty)")
    _check(s.clip_range > 0, "stage.clip_range", s.clip_range, "a positive number (PPO's ε)")
    _check(s.vf_coef >= 0, "stage.vf_coef", s.vf_coef, "a non-negative number")
    for name in ("gamma", "lam"):
        _check(0 <= getattr(s, name) <= 1, f"stage.{name}", getattr(s, name), "a value in [0, 1]")
    for name in ("ppo_epochs", "minibatches", "rollout_prompts"):
        _check(getattr(s, name) > 0, f"stage.{name}", getattr(s, name), "a positive integer")
    _check(s.rollout_prompts % s.minibatches == 0, "stage.rollout_prompts", s.rollout_prompts,
           f"a multiple of stage.minibatches={s.minibatches}")
    rows = s.rollout_prompts // s.minibatches
    _check(rows % t.grad_accum == 0, "train.grad_accum", t.grad_accum,
           f"a divisor of the {rows} rollouts of a step (stage.rollout_prompts / "
           "stage.minibatches)")
    _check(0 < s.max_new_tokens <= n_ctx - 2, "stage.max_new_tokens", s.max_new_tokens,
           f"a positive integer at most model.n_ctx - 2 = {n_ctx - 2} (room for an eos and a "
           "prompt)")
    _check(t.replicas == 1 and not t.replica_lr_scales, "train.replicas", t.replicas,
           "1 with stage=rl: each replica would need rollouts of its own")
    iteration = s.ppo_epochs * s.rollout_prompts * n_ctx
    _check(t.tokens >= iteration, "train.tokens", t.tokens,
           f"at least one PPO iteration with stage=rl, stage.ppo_epochs * stage.rollout_prompts "
           f"* model.n_ctx = {iteration} tokens")


def is_replica_group(cfg: TrainConfig) -> bool:
    """Whether the run trains its models as a group of replicas, each recorded on its own."""
    return cfg.replicas > 1 or bool(cfg.replica_lr_scales)


def replica_configs(cfg: Config, peak_lr: float) -> list[Config]:
    """The standalone config of each of the `train.replicas` models, `peak_lr` being the run's.

    Replica i is the run with seed train.seed + i and peak LR replica_lr_scales[i] * peak_lr,
    as an absolute train.lr (left as it was where the scale is 1, so that an unscaled replica
    of a run on Kaplan's rule is that run), and train.replicas=1: the config that trains the
    same model alone.
    """
    t = cfg.train
    configs = []
    for i, scale in enumerate(t.replica_lr_scales or [1.0] * t.replicas):
        lr = t.lr if scale == 1 else scale * peak_lr
        configs.append(replace(cfg, train=replace(t, seed=t.seed + i, lr=lr, replicas=1,
                                                  replica_lr_scales=[])))
    return configs


def branch_configs(cfg: Config, warmup_tokens: int) -> list[Config]:
    """The standalone config of each cooldown branch of `cfg` (`train.cooldowns`): the `wsd`
    run of train.tokens = Dk with no branches, which trains exactly as the branch does.

    `warmup_tokens` is the trunk's warmup in tokens: a warmup given as a fraction of the steps
    is taken of the longest branch's steps, and each branch records it as that token count (its
    own fraction would differ); a token count or rule is kept as it is."""
    t = cfg.train
    warmup = t.warmup if parse_warmup(t.warmup).kind != "fraction" else str(warmup_tokens)
    return [replace(cfg, train=replace(t, tokens=tokens, cooldowns=[], warmup=warmup))
            for tokens in t.cooldowns]


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts (for summary.json and the results table)."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj
