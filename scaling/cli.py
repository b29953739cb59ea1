"""Console entry points: Hydra parses and type-checks the config, we validate it, then hand over.

Errors a user can fix (a bad config value, missing data) print one line naming the field or path
and exit with status 2, without a traceback; `scaling.console` is that policy, Hydra's own errors
included.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scaling.config import (
    Config,
    ConfigError,
    from_hydra,
    key_help,
    register_configs,
)
from scaling.console import (
    USER_ERROR,
    ArgumentParser,
    UsageError,
    debugging,
    describe,
    exit_status,
    listing,
    one_line,
    print_error,
    program,
)
from scaling.sweep import exclusive_run, register_resolvers

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def fail(message: str) -> NoReturn:
    """End the command at once with a one-line error and status 2, no traceback.

    A SystemExit, so that Hydra's job runner does not hold it back until the rest of a sweep has
    run, as it does with exceptions.
    """
    print_error(message)
    sys.exit(USER_ERROR)


def load_config(cfg: DictConfig) -> Config:
    """Hydra's config as the typed, validated `Config`, or a clean exit naming the bad field."""
    try:
        config = from_hydra(cfg)
    except (ConfigError, OmegaConfBaseException) as error:
        _remove_stub()
        fail(describe(error))
    logging.getLogger("jax").setLevel(logging.WARNING)
    return config


def _remove_stub() -> None:
    """Delete what Hydra wrote for a launch that validation refused (`.hydra/` and the job's
    log) and its directory, where that is all the directory holds: a stub holds no run, and
    the results table would list it as a broken one."""
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    stub = {hydra.output_subdir, f"{hydra.job.name}.log"} - {None}
    if not run_dir.is_dir() or any(path.name not in stub for path in run_dir.iterdir()):
        return
    for name in stub:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    run_dir.rmdir()


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def help_text(about: str) -> str:
    """`--help`: what the command does, then every config group and key with its default and
    the schema's comment on it. A template for Hydra (`hydra.help.template`), which fills in
    $APP_CONFIG_GROUPS; any other `$` is escaped."""
    keys = "\n".join(key_help()).replace("$", "$$")
    return (f"{about.replace('$', '$$')}\n\n"
            "Every key below is an override, KEY=VALUE (-m KEY=A,B: a sweep; hydra/launcher=\n"
            "local or slurm: where a sweep's runs go). --cfg job prints the resolved config,\n"
            "--hydra-help Hydra's own flags.\n\n"
            "== Config groups (GROUP=OPTION, from conf/) ==\n$APP_CONFIG_GROUPS\n\n"
            "== Keys (KEY=DEFAULT, the schema's comment; schema: scaling/config.py) ==\n"
            f"{keys}\n")


def hydra_entry(task: Callable[[DictConfig], None], about: str) -> None:
    """Run `task` under Hydra with this project's conf/ and schema (all console scripts); any
    error, Hydra's own included, ends the command as `scaling.console.exit_status` says.
    `about` opens `--help`, before the config keys."""
    register_configs()
    register_resolvers()
    OmegaConf.register_new_resolver("scaling_help", lambda: help_text(about), replace=True)
    # A log handler that cannot write (the run's train.log on a full disk) drops the line, as
    # the logging docs advise for production, instead of printing a traceback per line; the
    # error itself still ends the run in one line.
    logging.raiseExceptions = False

    @functools.wraps(task)
    def reported(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except Exception as error:
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                raise  # Hydra keeps it with the run's result: the sweep goes on and ends failed
            # Reported here, a run's error comes without Hydra's "Error executing job" line.
            sys.exit(exit_status(error))

    # HYDRA_FULL_ERROR=1 is Hydra's documented switch to raise an error instead of printing it
    # (several lines and a hint, exit 1). The runs a launcher starts inherit it, so SCALING_DEBUG
    # carries the user's own choice of tracebacks to them.
    with _environ(HYDRA_FULL_ERROR="1", SCALING_DEBUG="1" if debugging() else "0"):
        try:
            hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(reported)()
        except KeyboardInterrupt:  # Ctrl-C on a sweep's front end (a run handles its own)
            print(f"{program()}: interrupted (jobs a scheduler already holds keep running)",
                  file=sys.stderr, flush=True)
            sys.exit(128 + signal.SIGINT)
        except Exception as error:
            sys.exit(exit_status(error))


def _train_task(cfg: DictConfig) -> None:
    config = load_config(cfg)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)

    # after validation: config errors come before JAX loads
    from scaling.distributed import initialize, process_index
    from scaling.stages import run_stage
    from scaling.train import Interrupted

    initialize(config.train.distributed)  # before anything starts JAX's devices
    with exclusive_run(run_dir, process_index()) as ours:
        if not ours:
            logging.getLogger("scaling").warning("%s is being trained by another process; "
                                                 "skipped", run_dir)
            return
        try:
            run_stage(config, run_dir)
        # A signal (Ctrl-C, a scheduler's SIGTERM) stopped the loop, which checkpointed and
        # recorded it: one line and the shell's status for that signal; a sweep in this process
        # stops here too (SystemExit gets past Hydra's job runner).
        except Interrupted as stop:
            print(f"{program()}: {stop}", file=sys.stderr, flush=True)
            if stop.then is not None:  # submitit's requeue of a Slurm job, now that it is safe
                stop.then(stop.signum, None)
            sys.exit(stop.exit_status)
        except KeyboardInterrupt:  # Ctrl-C before the loop took the signal: nothing trained
            print(f"{program()}: interrupted before training started; nothing to resume",
                  file=sys.stderr, flush=True)
            sys.exit(128 + signal.SIGINT)
        # Errors a user can fix (a batch the devices cannot split, missing data, a directory of
        # another run, no readable checkpoint, a parent run that does not fit), already
        # recorded where the run's record is ours: one line, no traceback. A sweep in this
        # process (Hydra's basic launcher) goes on with its next runs and ends failed; an exit
        # here would end it at this run.
        except UsageError as error:
            if hydra_cfg.mode == RunMode.MULTIRUN:
                logging.getLogger("scaling").error("%s failed: %s", run_dir, error)
                raise CompactHydraException(f"{run_dir}: {error}") from error
            fail(str(error))


TRAIN_ABOUT = """scaling-train [KEY=VALUE ...]: train one model and record it in hydra.run.dir
(summary.json, metrics.parquet, checkpoints/); with -m, a sweep of them. The stage
(stage=pretrain|finetune|sft|reward|dpo|rl) picks data, loss and initialisation. The same
command again resumes an unfinished run and skips a completed one; Ctrl-C saves a checkpoint
first."""


def train() -> None:
    """`scaling-train [overrides]`: one run of any stage (or a sweep of them with -m)."""
    hydra_entry(_train_task, TRAIN_ABOUT)


def report(argv: list[str] | None = None) -> None:
    """`scaling-report SWEEP_DIR [--corpus CACHE]`: gather every run below SWEEP_DIR into
    results.parquet and curves.parquet, and write SWEEP_DIR/report/ (index.html, its figures
    and fits.json). The fits use the pretraining runs of one corpus (runs of several corpora
    or tokenizers are never pooled): the one with the most completed runs, or --corpus; the
    page and the last line name the runs left out. Best-of-n tables (scaling-bon's OUT_DIR,
    e.g. SWEEP_DIR/bon/) and stage=rl and stage=dpo runs below SWEEP_DIR make the
    overoptimization section; stage=mlm runs, the masked-LM section."""
    try:
        _report(argv)
    except Exception as error:
        sys.exit(exit_status(error, "scaling-report"))


def _report(argv: list[str] | None) -> None:
    parser = ArgumentParser(prog="scaling-report", description=report.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--bootstrap", type=int, default=0, metavar="K",
                        help="bootstrap resamples for the fits' intervals (default: none)")
    parser.add_argument("--corpus", metavar="CACHE",
                        help="fit the pretraining runs of this corpus (their corpus_cache, e.g. "
                             "stdlib-bpe4096-391502949643341d; default: the corpus with the "
                             "most completed pretraining runs)")
    parser.add_argument("--count", metavar="CONVENTION",
                        help="count N and C = 6·N·D of every fit by this convention "
                             "(analysis.counting): kaplan (N non-embedding), standard (+ the "
                             "unembedding) or total (every parameter); default: N "
                             "non-embedding, C the FLOPs each run recorded")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise UsageError(f"{args.sweep_dir} is not a directory")

    from analysis.counting import counted_n
    from analysis.overopt import read_bon
    from analysis.page import write_page
    from analysis.table import FitInputError, pretraining_scope
    from scaling.record import atomic_directory
    from scaling.results import write_tables

    collected = write_tables(args.sweep_dir)
    # One line however many directories are broken; the report lists every one.
    skipped = (f"skipped {len(collected.problems)} run directories: "
               f"{listing(collected.problems, 2, sep='; ')}" if collected.problems else "")
    if collected.results.empty:
        raise UsageError(f"no run records (summary.json) below {args.sweep_dir}"
                         + (f"; {skipped}" if skipped else ""))
    try:
        scope = pretraining_scope(collected.results, args.corpus)
    except FitInputError as error:
        raise UsageError(f"--corpus: {error}") from error
    if args.count:  # before the fits, which take a while
        try:
            counted_n(collected.results, args.count)
        except FitInputError as error:
            raise UsageError(str(error)) from error
    try:
        bon = read_bon(args.sweep_dir)  # scaling-bon's tables, wherever they are below it
    except FitInputError as error:
        raise UsageError(str(error)) from error
    command = f"scaling-report {shlex.quote(str(args.sweep_dir))}"
    report_dir = args.sweep_dir / "report"
    # Written aside and renamed in, the page last: another report on the sweep at the same
    # time, or a full disk, never leaves a torn page, fits.json or figure.
    with atomic_directory(report_dir, last=("index.html",)) as staging:
        page = write_page(
            collected.results, collected.curves, staging,
            title=f"Sweep {args.sweep_dir.name}", problems=collected.problems,
            positions=collected.positions if not collected.positions.empty else None,
            n_bootstrap=args.bootstrap, corpus=args.corpus, command=command, count=args.count,
            bon=bon)
    index = report_dir / page.name
    if skipped:
        print(one_line(f"{skipped} (all listed in {index})"), file=sys.stderr)
    counts = collected.results["status"].value_counts().to_dict()
    print(f"{len(collected.results)} runs ({', '.join(f'{v} {k}' for k, v in counts.items())}) "
          f"-> {args.sweep_dir / 'results.parquet'}, {index}")
    left_out = [f"{n} on {name} (--corpus {shlex.quote(name)})"
                for name, n in scope.left_out.items()]
    left_out += [f"{n} {stage}" for stage, n in scope.stages.items()]
    if left_out:
        on = f" on {scope.corpus}" if scope.corpus else ""
        print(f"fitted: {scope.completed} completed pretraining runs{on}; not fitted: "
              f"{listing(left_out, sep='; ')}")


def sample(argv: list[str] | None = None) -> None:
    """`scaling-sample RUN_DIR --prompt TEXT [--n N] ...`: continue TEXT with a trained run's
    model (its latest checkpoint, or --step) and tokenizer, and print each of the N samples
    after a header line. Generation stops at the tokenizer's eos or after --max-new-tokens."""
    try:
        _sample(argv)
    except Exception as error:
        sys.exit(exit_status(error, "scaling-sample"))


def _sample(argv: list[str] | None) -> None:
    parser = ArgumentParser(prog="scaling-sample", description=sample.__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--prompt", required=True,
                        help="text to continue (read after an eos, as a document starts)")
    parser.add_argument("--n", type=int, default=1, help="samples (default 1)")
    parser.add_argument("--max-new-tokens", type=int, metavar="M",
                        help="new tokens at most (default: the rest of the context, n_ctx "
                             "minus the prompt's tokens)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy (default 1)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="draw from the K likeliest tokens (default 0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P",
                        help="draw from the likeliest tokens holding probability P (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed, the same samples")
    parser.add_argument("--step", default="latest",
                        help="the checkpoint: latest (default), best, or a step number")
    args = parser.parse_args(argv)

    from scaling.sample import Policy, check_options

    policy = Policy(args.temperature, args.top_k, args.top_p)
    check_options(policy, args.n, args.max_new_tokens)  # before loading anything

    from dataclasses import replace

    import jax
    import numpy as np

    from scaling.config import ModelConfig
    from scaling.model import model_shape, resolve_dtype
    from scaling.sample import generate
    from scaling.stages.parent import load_run

    run = load_run(args.run_dir, args.step, step_key="--step")
    tokenizer = run.tokenizer_dataset().tokenizer
    shape = model_shape(ModelConfig(**run.summary["config"]["model"]), run.summary["vocab_size"])
    model_cfg = replace(shape, dtype=resolve_dtype(shape.dtype))
    prompt = [tokenizer.eos_id, *tokenizer.encode(args.prompt)]
    samples = generate(
        model_cfg, run.init_params(), np.array([prompt]),
        max_new_tokens=args.max_new_tokens or max(model_cfg.n_ctx - len(prompt), 1),
        temperature=policy.temperature, top_k=policy.top_k, top_p=policy.top_p, n=args.n,
        eos_id=tokenizer.eos_id, rng=jax.random.PRNGKey(args.seed))
    tokens_NxT = np.asarray(samples.tokens_BxNxT[0])
    for i, length in enumerate(np.asarray(samples.lengths_BxN[0]).tolist()):
        new = tokens_NxT[i, :length].tolist()
        ended = bool(new) and new[-1] == tokenizer.eos_id
        print(f"--- sample {i + 1} of {args.n}: {length} new tokens"
              f"{', ended at eos' if ended else ''} ---")
        print(tokenizer.decode(prompt[1:] + new[:length - ended]))


def compare(argv: list[str] | None = None) -> None:
    """`scaling-compare POLICY_RUN_DIR OUT.jsonl [--n 4] [--prompts train] ...`: sample N
    responses to each prompt of the policy's own SFT data (its train split by default) from
    the policy, score each with the gold reward against the reference response, and write
    every pair with unequal scores, labelled, to OUT.jsonl (the comparisons a reward model
    trains on: stage=reward data=comparisons) and every sample with its gold score to
    OUT.samples.jsonl, one line per prompt."""
    try:
        _compare(argv)
    except Exception as error:
        sys.exit(exit_status(error, "scaling-compare"))


def _compare(argv: list[str] | None) -> None:
    parser = ArgumentParser(prog="scaling-compare", description=compare.__doc__)
    parser.add_argument("policy", type=Path, metavar="POLICY_RUN_DIR")
    parser.add_argument("out", type=Path, metavar="OUT.jsonl")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    parser.add_argument("--prompts", default="train",
                        help="train (default) or val: every prompt of the policy's split that "
                             "fits; N or train:N / val:N: N of them, spread evenly")
    parser.add_argument("--gold", default="sft_body", help="the gold reward (default sft_body)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature, 0: greedy (default 1)")
    parser.add_argument("--max-new-tokens", type=int, metavar="M",
                        help="new tokens per sample at most (default n_ctx // 2); prompts "
                             "without room for M and an eos are skipped")
    parser.add_argument("--seed", type=int, default=0, help="the same seed, the same samples")
    parser.add_argument("--label-temperature", type=float, default=0.0, metavar="T",
                        help="0 (default): the higher gold score wins; T > 0: a wins with "
                             "probability σ((gold_a − gold_b) / T)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="B",
                        help="prompts sampled at once (B × N sequences; default 16)")
    parser.add_argument("--step", default="latest",
                        help="the policy's checkpoint: latest (default), best, or a step")
    args = parser.parse_args(argv)

    from scaling.rlhf.collect import PromptChoice, samples_path
    from scaling.rlhf.gold import GOLD_REWARDS
    from scaling.sample import Policy, check_options

    choice = PromptChoice.parse(args.prompts)
    check_options(Policy(args.temperature), args.n, args.max_new_tokens)  # before loading
    if args.gold not in GOLD_REWARDS:
        raise UsageError(f"--gold {args.gold}: expected one of {listing(sorted(GOLD_REWARDS))}")
    if not args.label_temperature >= 0:
        raise UsageError(f"--label-temperature {args.label_temperature}: expected 0 or more")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected at least 1")
    if not args.out.parent.is_dir():
        raise UsageError(f"{args.out}: no directory {args.out.parent} to write it in")

    from scaling.rlhf import gold_reward, write_comparisons
    from scaling.rlhf.collect import collect, policy_prompts, write_samples
    from scaling.stages.parent import load_run

    policy = load_run(args.policy, args.step, step_key="--step")
    collection = collect(
        policy, policy_prompts(policy, choice), choice, gold_reward(args.gold), n=args.n,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        label_temperature=args.label_temperature, seed=args.seed, batch_size=args.batch_size)
    write_comparisons(args.out, collection.comparisons)
    write_samples(samples_path(args.out), collection.prompts)
    s = collection.stats()
    print(f"{s['prompts']} {choice.split} prompts (of {s['fitting']} with room for "
          f"{collection.max_new_tokens} new tokens; {s['skipped']} without) x {args.n} samples: "
          f"mean gold "
          f"{s['mean_gold']:.3f}, {s['mean_new_tokens']:.0f} new tokens on average, "
          f"{s['ended']:.0%} ended at eos; sampled in {s['sampling_s']:.1f} s "
          f"({s['tokens_per_s']:,.0f} new tokens/s), scored in {s['scoring_s']:.1f} s")
    print(f"{s['comparisons']} comparisons -> {args.out}; samples -> {samples_path(args.out)}")


def bon(argv: list[str] | None = None) -> None:
    """`scaling-bon POLICY_RUN_DIR RM_RUN_DIR [RM_RUN_DIR ...] OUT_DIR [--n-max 256] ...`:
    best-of-n against each reward model, no training (Gao et al. 2022). One pool of --pool
    samples (default --n-max) per prompt of the policy's own SFT data (its val split by
    default) from the policy at temperature 1, each scored by the gold reward and by every
    reward model; for n = 1, 2, 4, ..., --n-max, the expected gold and proxy score of the
    proxy's favourite of n, over all n-subsets of the pool, and KL = ln n - (n-1)/n. Writes
    OUT_DIR/bon.parquet (a row per reward model and n), bon_prompts.parquet (per prompt),
    pool.parquet (every sample's scores) and bon.json (settings and cost). With --study
    STUDY_DIR, the policy and reward models are the study's (every completed stage=reward run
    under it with data=policy_comparisons, and the policy they sampled), OUT_DIR is
    STUDY_DIR/bon, and tables already there for the same runs and settings are kept."""
    try:
        _bon(argv)
    except Exception as error:
        sys.exit(exit_status(error, "scaling-bon"))


def _bon(argv: list[str] | None) -> None:
    parser = ArgumentParser(
        prog="scaling-bon", description=bon.__doc__,
        usage="scaling-bon POLICY_RUN_DIR RM_RUN_DIR [RM_RUN_DIR ...] OUT_DIR [options]\n"
              "       scaling-bon --study STUDY_DIR [options]")
    parser.add_argument("policy", type=Path, nargs="?", metavar="POLICY_RUN_DIR")
    parser.add_argument("runs", type=Path, nargs="*", metavar="RM_RUN_DIR",
                        help="reward-model run directories (stage=reward), then the output "
                             "directory (created if absent)")
    parser.add_argument("--study", type=Path, metavar="STUDY_DIR",
                        help="instead of the runs: the study's policy and every completed "
                             "reward model under STUDY_DIR that sampled it; writes "
                             "STUDY_DIR/bon, unless it is up to date")
    parser.add_argument("--n-max", type=int, default=256, metavar="N",
                        help="the largest n (default 256); n runs over 1, 2, 4, ... and N")
    parser.add_argument("--pool", type=int, metavar="M",
                        help="samples per prompt, at least --n-max (default: --n-max)")
    parser.add_argument("--prompts", default="val:32",
                        help="val:N (default val:32) or val: the policy's held-out prompts "
                             "(N spread evenly); train, N or train:N: its training prompts")
    parser.add_argument("--gold", default="sft_body", help="the gold reward (default sft_body)")
    parser.add_argument("--max-new-tokens", type=int, metavar="T",
                        help="new tokens per sample at most (default n_ctx // 2); prompts "
                             "without room for T and an eos are skipped")
    parser.add_argument("--seed", type=int, default=0, help="the same seed, the same pools")
    parser.add_argument("--batch-size", type=int, default=256, metavar="B",
                        help="sequences sampled at once (B // pool prompts, at least 1; "
                             "default 256)")
    parser.add_argument("--step", default="latest",
                        help="the policy's checkpoint: latest (default), best, or a step")
    args = parser.parse_args(argv)
    if args.study is not None:
        if args.policy is not None:
            raise UsageError("--study finds the policy and reward models: name no run with it")
        if not args.study.is_dir():
            raise UsageError(f"--study {args.study}: not a directory")
    elif args.policy is None or len(args.runs) < 2:
        raise UsageError("expected POLICY_RUN_DIR, at least one RM_RUN_DIR and OUT_DIR, or "
                         "--study STUDY_DIR")
    *rm_dirs, out = args.runs or [args.study / "bon"]

    from scaling.rlhf.bon import n_grid
    from scaling.rlhf.collect import PromptChoice
    from scaling.rlhf.gold import GOLD_REWARDS
    from scaling.sample import Policy, check_options

    if args.n_max < 1:
        raise UsageError(f"--n-max {args.n_max}: expected at least 1")
    pool = args.n_max if args.pool is None else args.pool
    if pool < args.n_max:
        raise UsageError(f"--pool {pool}: expected at least --n-max {args.n_max}")
    choice = PromptChoice.parse(args.prompts)
    check_options(Policy(), pool, args.max_new_tokens)  # before loading
    if args.gold not in GOLD_REWARDS:
        raise UsageError(f"--gold {args.gold}: expected one of {listing(sorted(GOLD_REWARDS))}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected at least 1")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: not a directory (OUT_DIR comes last)")
    names = [path.resolve().name for path in rm_dirs]  # a reward model's rows are its name's
    twice = sorted({str(path) for path, name in zip(rm_dirs, names, strict=True)
                    if names.count(name) > 1})
    if twice:
        raise UsageError(f"reward models {', '.join(twice)} share a directory name: each "
                         "names its rows in the tables, give each once")

    from scaling.rlhf import gold_reward
    from scaling.rlhf.bon import (
        best_of_n_run,
        check_reward_model,
        study_runs,
        up_to_date,
        write_bon,
    )
    from scaling.rlhf.collect import draw, policy_prompts
    from scaling.stages.parent import load_run

    options = {k: v for k, v in vars(args).items() if k not in ("policy", "runs", "study")}
    if args.study is not None:
        args.policy, rm_dirs = study_runs(args.study)
        print(f"study {args.study}: policy {args.policy}, {len(rm_dirs)} reward models: "
              f"{', '.join(p.name for p in rm_dirs)}")
        if up_to_date(out, args.policy, rm_dirs, options):
            print(f"{out / 'bon.parquet'} is up to date (the same runs and settings): kept")
            return
    policy = load_run(args.policy, args.step, step_key="--step")
    rms = [load_run(path) for path in rm_dirs]
    for rm in rms:  # before sampling; the windows' length is checked once they are drawn
        check_reward_model(policy, rm)
    ns = n_grid(args.n_max)
    drawn = draw(policy, policy_prompts(policy, choice), choice, gold_reward(args.gold), n=pool,
                 max_new_tokens=args.max_new_tokens, seed=args.seed,
                 batch_size=max(1, args.batch_size // pool))
    result = best_of_n_run(policy, rms, drawn, ns, policy.tokenizer_dataset().tokenizer.eos_id)
    out.mkdir(parents=True, exist_ok=True)
    write_bon(out, result, vars(args))
    r = result.record
    print(f"{r['n_prompts']} {choice.split} prompts (of {r['fitting']} with room for "
          f"{r['max_new_tokens']} new tokens; {r['skipped']} without) x {pool} samples: "
          f"sampled in {r['sampling_s']:.1f} s ({r['tokens_per_s']:,.0f} new tokens/s), gold "
          f"scored in {r['gold_scoring_s']:.1f} s, proxies in "
          f"{sum(r['proxy_scoring_s'].values()):.1f} s")
    table = result.table
    for rm_run, rows in table.groupby("rm_run", sort=False):
        top = rows.iloc[-1]
        print(f"{rm_run}: gold {rows['gold_reward'].iloc[0]:.4f} (n=1) -> "
              f"{top['gold_reward']:.4f} (n={top['n']}, KL {top['kl']:.2f} nats), proxy "
              f"{rows['proxy_reward'].iloc[0]:.3f} -> {top['proxy_reward']:.3f}")
    print(f"-> {out / 'bon.parquet'}")


def export(argv: list[str] | None = None) -> None:
    """`scaling-export RUN_DIR OUT_DIR [--step N]`: write a run's model (its latest checkpoint,
    or --step) and tokenizer as a Hugging Face GPT-2 checkpoint that `GPT2LMHeadModel` and
    `AutoTokenizer.from_pretrained(OUT_DIR)` load offline (docs/interop.md)."""
    try:
        _export(argv)
    except Exception as error:
        sys.exit(exit_status(error, "scaling-export"))


def _export(argv: list[str] | None) -> None:
    parser = ArgumentParser(prog="scaling-export", description=export.__doc__)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="the checkpoint's directory (created; files in it replaced)")
    parser.add_argument("--step", default="latest",
                        help="the checkpoint: latest (default), best, or a step number")
    args = parser.parse_args(argv)

    from scaling.hf import export_run

    done = export_run(args.run_dir, args.out_dir, args.step)
    print(f"{done.run_dir} step {done.step} -> {done.out_dir}: GPT2LMHeadModel, "
          f"{done.n_params:,} parameters, in {done.seconds:.1f} s")
