"""Configs fuzzed with hypothesis: Hydra override lists over the schema's real keys (and some
that are not), with type-confused, out-of-range, missing and extreme values, wrong data sources
and bad lists. Each must end as `scaling-train` promises: one line on stderr naming what to
fix, exit 2, no traceback and no completed record; or a valid run (exit 0, its record finished).

Most examples are checked in-process, through what `scaling-train` does before it trains:
Hydra composes conf/ with the overrides, the run directory is named from the values
(`${run_id:}`), `scaling.config.from_hydra` types and validates them, and an error ends as every
console script's does (`scaling.console.exit_status`). A few examples that validate are then
trained for real by `scaling-train`, a tiny model with its steps capped by a fixed budget.
Examples are drawn from a fixed seed (`derandomize`), so CI sees the same ones every time.
"""

import contextlib
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from omegaconf import open_dict

from scaling.cli import CONF_DIR
from scaling.config import Config, from_hydra, register_configs, to_dict
from scaling.console import USER_ERROR, exit_status
from scaling.sweep import flatten, register_resolvers

TRAIN = Path(sys.executable).parent / "scaling-train"
KEYS = sorted(flatten(to_dict(Config())))  # every key of the schema, dotted
GROUPS = {group: sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
          for group in ("model", "data", "stage")}

# Values as a user might type them, each a way to be wrong somewhere: numbers out of every range
# (negative, zero, huge, beyond int64, not finite), strings where numbers go, lists and maps
# where scalars go, Hydra's interpolations and its MISSING, and bits of the override grammar.
NUMBERS = ["0", "-1", "1", "2", "3", "-0.0", "0.5", "1.5", "2.5e5", "1e6", "1e300", "-1e300",
           "1e-300", "nan", "-nan", "inf", "-inf", "9223372036854775808",
           "-99999999999999999999", "4294967296", "1_000"]
WORDS = ["abc", "null", "true", "false", "''", "' '", "none", "auto", "bytes", "bpe", "files",
         "stdlib", "jsonl", "hf", "sft_stdlib", "comparisons", "policy_comparisons", "web",
         "cosine", "wsd", "constant", "kaplan", "porian", "xla", "cudnn", "float16", "dp", "fsdp",
         "tensorboard", "wandb", "latest", "best", "/no/such/dir", "/no/such/*.txt", "???"]
LISTS = ["[]", "[1,2]", "[-1]", "[0]", "[nan]", "[inf]", "[a,b]", "[[1]]", "['']", "[1e300]",
         "[tensorboard,wandb]", "[/no/such/*.py]", "{a: 1}", "{}"]
ODD = ["", "${oc.env:SCALING_NO_SUCH_VAR}", "${model.d_model}", "${no.such.key}",
       "${isoflop_tokens:}", "${width_for_params:-1}", "a=b", "[", "'", "\\", "${", "x,y",
       "${oc.decode:'{a: 1'}"]
UNKNOWN = ["model.no_such_key", "train.warmup_fraction", "stage.schedule", "train.lr_schedule",
           "data.sources", "train.distributed.port", "no_such_group", "model.d_model.x", "train",
           "hydra.no_such_key"]


def values() -> st.SearchStrategy[str]:
    """A value's text: mostly from the lists above, else any number or short string."""
    listed = st.sampled_from(NUMBERS + WORDS + LISTS + ODD)
    return st.one_of(listed, listed, listed, st.integers().map(str), st.floats().map(repr),
                     st.text(max_size=6))


@st.composite
def override(draw, keys: list[str]) -> str:
    """One override of one of `keys` (or an unknown key, or a config group's option), in one
    of the grammar's forms: KEY=VALUE, +KEY=VALUE, ++KEY=VALUE, ~KEY, KEY= ."""
    kind = draw(st.sampled_from(["set", "set", "set", "set", "unknown", "group", "form"]))
    if kind == "group":
        group = draw(st.sampled_from(sorted(GROUPS)))
        return f"{group}={draw(st.sampled_from([*GROUPS[group], 'no_such_option', 'null']))}"
    key = draw(st.sampled_from(UNKNOWN if kind == "unknown" else keys))
    if kind == "form":
        form = draw(st.sampled_from(["+{}={}", "++{}={}", "~{}", "{}="]))
        return form.format(key, draw(values()))
    return f"{key}={draw(values())}"


def launch_in_process(overrides: list[str]) -> tuple[Config | None, int, str]:
    """What `scaling-train OVERRIDES` does before it trains: (the validated Config, 0, '') or
    (None, its exit status, its stderr), the error reported by `exit_status` as the command's
    top level reports it."""
    stderr = io.StringIO()
    try:
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        assert cfg.hydra.run.dir  # named from the values, as Hydra names the run's directory
        with open_dict(cfg):
            del cfg["hydra"]
        return from_hydra(cfg), 0, ""
    except Exception as error:
        with contextlib.redirect_stderr(stderr):
            status = exit_status(error, "scaling-train")
        return None, status, stderr.getvalue()


def assert_refused_in_one_line(status: int, stderr: str, overrides: list[str]) -> None:
    """The user's error, said in one line: status 2, `scaling-train: error: ...`, no traceback."""
    assert status == USER_ERROR, f"{overrides}: a bug, not the user's error: {stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scaling-train: error: "), stderr


@pytest.fixture(scope="module", autouse=True)
def hydra_of_scaling_train() -> Iterator[None]:
    """Hydra set up as `scaling-train` sets it up: conf/, the schema in its ConfigStore and the
    project's resolvers; once for the module, each example composing in it."""
    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield


# `faults` is the session's counter, meant to add up over examples
@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(override(KEYS), min_size=1, max_size=3))
def test_a_fuzzed_config_is_refused_in_one_line_or_valid(overrides, faults):
    faults["fuzzed config: checked as scaling-train does before training"] += 1
    config, status, stderr = launch_in_process(overrides)
    if config is None:
        assert_refused_in_one_line(status, stderr, overrides)


# The keys a fuzzed run may change and still be a tiny run of a few steps: not its size, budget,
# data, stage, evaluation batches or processes (those are fuzzed in-process above).
CHEAP_KEYS = [key for key in KEYS if key.split(".")[0] in ("model", "train")
              and key not in ("model.n_layer", "model.d_model", "model.n_head", "model.n_ctx",
                              "model.d_ff", "train.tokens", "train.budget", "train.batch_size",
                              "train.eval_batches", "train.replicas", "train.noise_scale_batches",
                              "train.compile_cache_dir")
              and not key.startswith("train.distributed.")]


@pytest.fixture(scope="module")
def tiny_run(corpus_dir, cache_dir, tmp_path_factory) -> tuple[list[str], Path]:
    """The overrides of a tiny run (16 steps of 8 x 32 tokens on the test corpus, byte tokens)
    that the fuzzed ones go after, and a directory for the runs."""
    return ([
        "model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.n_ctx=32",
        "train.tokens=4096", "train.batch_size=8", "train.eval_count=3", "train.eval_batches=1",
        "data=files", f"data.paths=[{corpus_dir}/*.py]", "data.tokenizer=bytes",
        f"data.cache_dir={cache_dir}",
    ], tmp_path_factory.mktemp("fuzzed_runs"))


# Not shrunk: each example is a training run; a failing one is shown as drawn, and its smallest
# form goes into FOUND below by hand.
@settings(max_examples=3, derandomize=True, database=None, deadline=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(fuzzed=st.lists(override(CHEAP_KEYS).filter(lambda o: o.split("=")[0] in CHEAP_KEYS),
                       min_size=1, max_size=2))
def test_a_fuzzed_config_that_validates_trains_or_fails_in_one_line(fuzzed, tiny_run, faults):
    base, runs = tiny_run
    overrides = [*base, *fuzzed]
    config, status, stderr = launch_in_process(overrides)
    if config is None:
        assert_refused_in_one_line(status, stderr, overrides)
    assume(config is not None)  # only those that validate are trained
    faults["fuzzed config: trained by scaling-train"] += 1
    run_dir = runs / uuid.uuid4().hex
    result = subprocess.run([str(TRAIN), *overrides, f"hydra.run.dir={run_dir}"],
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if result.returncode == 0:
        # diverged is a finished run too, recorded with its reason (a huge learning rate)
        assert summary.get("status") in ("completed", "diverged"), (fuzzed, summary)
    else:
        assert_refused_in_one_line(result.returncode, result.stderr, fuzzed)
        assert summary.get("status") != "completed", fuzzed


# What the fuzzing found, each a traceback or a bug's exit once: the smallest overrides that
# showed it, and the key the one-line refusal must name.
FOUND = [
    # np.random.default_rng refuses a negative seed, JAX one beyond int64: both mid-run
    (["train.seed=2.4082213886996514e+54"], "train.seed"),
    (["train.seed=-1"], "train.seed"),
    # evaluations placed by np.geomspace: tens of GB at 1e9 (a MemoryError beyond), untrained
    (["train.eval_count=1e9"], "train.eval_count"),
    (["data=policy_comparisons", "data.policy=/no/such/run", "data.comparison_seed=-1",
      "stage=reward", "stage.init_from=/no/such/run"], "data.comparison_seed"),
]


@pytest.mark.parametrize(("overrides", "key"), FOUND)
def test_what_fuzzing_found_is_refused_before_training(overrides, key, faults):
    faults["fuzzed config: a regression case"] += 1
    config, status, stderr = launch_in_process(overrides)
    assert config is None, f"{overrides} validates"
    assert_refused_in_one_line(status, stderr, overrides)
    assert key in stderr


def test_cudnn_attention_where_it_cannot_run_is_refused_in_one_line(tiny_run, faults):
    """Found running the fuzzer's values for real: past validation (only JAX knows the
    machine), JAX's RuntimeError at the first step; now a refusal naming the key."""
    faults["fuzzed config: a regression case"] += 1
    base, runs = tiny_run
    overrides = [*base, "model.attention=cudnn", "model.dtype=float32"]
    result = subprocess.run([str(TRAIN), *overrides, f"hydra.run.dir={runs / 'cudnn'}"],
                            capture_output=True, text=True, timeout=300)
    assert_refused_in_one_line(result.returncode, result.stderr, overrides)
    assert "model.attention=cudnn" in result.stderr
    summary = runs / "cudnn" / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] == "failed"
