"""`scaling-fit TABLE --law LAW`: fit one law to a CSV or Parquet table from the shell."""

import argparse
import json
import sys

import numpy as np
import pandas as pd

from analysis.allocation import compute_optimal, predict
from analysis.counting import CONVENTIONS, describe, recount
from analysis.isoflop import PROFILES
from analysis.plots import plot_fit
from analysis.registry import LAWS, fit_law, required_columns
from analysis.result import Fit, jsonable
from analysis.table import CANONICAL, FLOPS_PER_TOKEN, FitInputError, derive, load_table, select
from analysis.transfer import MAX_FRACTION
from scaling.console import ArgumentParser, UsageError, exit_status


def _flops_per_token(value: str) -> float | None:
    """A positive number, or 'table' for the table's own C/(N·D)."""
    if value == "table":
        return None
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive or 'table'")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the canonical column names as defaults."""
    parser = ArgumentParser(
        prog="scaling-fit", description="Fit a scaling law to a results table (CSV or Parquet)."
    )
    parser.add_argument("table", help="CSV or Parquet file, one row per run or evaluation")
    parser.add_argument(
        "--law",
        required=True,
        choices=tuple(LAWS),
        help="; ".join(f"{name}: {law.formula}" for name, law in LAWS.items()),
    )
    for name in CANONICAL:
        what = "loss (rising: y)" if name == "loss" else name
        parser.add_argument(f"--{name}", default=name, metavar="COL", help=f"column for {what}")
    parser.add_argument(
        "--x", default="N", metavar="COL", help="power, rising: column of x (N, D or C)"
    )
    parser.add_argument(
        "--no-offset",
        dest="offset",
        action="store_false",
        help="power, envelope: Kaplan's pure form, E = 0",
    )
    parser.add_argument(
        "--method",
        choices=("grid", "varpro"),
        default=None,
        help="chinchilla (default grid, the published L-BFGS grid) and transfer's from-scratch "
        "L(N, D) (default varpro, variable projection)",
    )
    parser.add_argument(
        "--flops-per-token",
        type=_flops_per_token,
        default=FLOPS_PER_TOKEN,
        metavar="K",
        help="C = K·N·D (default 6); isoflop also takes 'table'",
    )
    parser.add_argument(
        "--derive",
        choices=("D", "C"),
        help="compute the missing D or C from the other two with C = K·N·D",
    )
    parser.add_argument(
        "--mad-threshold",
        type=float,
        metavar="K",
        help="isoflop: reject points beyond K robust SDs of their parabola",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="parabola",
        help="isoflop: each budget's optimum from a parabola in ln N (default, Hoffmann) or "
        "the minimum of an Akima spline of ln loss in ln N (Porian et al. 2024)",
    )
    parser.add_argument(
        "--count",
        choices=tuple(CONVENTIONS),
        help="N and C = 6·N·D from a run table's parameter counts by this convention: "
        + "; ".join(f"{name}: {c.definition}" for name, c in CONVENTIONS.items())
        + " (default: the table's own N and C columns)",
    )
    parser.add_argument(
        "--cut",
        type=float,
        default=MAX_FRACTION,
        metavar="F",
        help="transfer: fit the fine-tunes with D_F/D_E <= F, the low-data regime (default 0.5)",
    )
    parser.add_argument("--query", metavar="EXPR", help="keep rows matching a pandas query")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="K", help="resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", type=float, default=0.95, help="interval coverage")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="PNG", help="write the figure here")
    parser.add_argument(
        "--predict",
        action="append",
        default=[],
        metavar="VAR=X[,X…]",
        help="predicted loss at these points, e.g. N=1e9,1e10 or N=1e9,D=2e10 (repeatable); "
        "intervals need --bootstrap",
    )
    return parser


def parse_points(specs: list[str], variables: tuple[str, ...] | None, law: str) -> pd.DataFrame:
    """The points of `--predict VAR=X[,X…][,VAR=X…]` as a table with one column per variable.

    A key with one value is repeated to the length of the others. Raises `UsageError` for an
    unknown or missing variable (unchecked when `variables` is None: before the fit, which
    names them), a value that is not a positive number, or unequal lengths.
    """
    frames = []
    for spec in specs:
        values: dict[str, list[float]] = {}
        key = None
        for token in spec.split(","):
            if "=" in token:
                key, token = (part.strip() for part in token.split("=", 1))
                if variables is not None and key not in variables:
                    raise UsageError(
                        f"--predict {spec!r}: {law} has no variable {key!r} "
                        f"(it predicts from {', '.join(variables)})"
                    )
                values[key] = []
            if key is None:
                raise UsageError(f"--predict {spec!r}: write VAR=X, e.g. N=1e9")
            try:
                number = float(token)
            except ValueError:
                raise UsageError(f"--predict {spec!r}: {token!r} is not a number") from None
            if not number > 0 or not np.isfinite(number):
                raise UsageError(f"--predict {spec!r}: {key} must be positive and finite")
            values[key].append(number)
        missing = [v for v in variables or () if v not in values]
        if missing:
            raise UsageError(f"--predict {spec!r}: {law} also needs {', '.join(missing)}")
        n = max(len(v) for v in values.values())
        if any(len(v) not in (1, n) for v in values.values()):
            raise UsageError(f"--predict {spec!r}: give each variable one value or {n}")
        frames.append(pd.DataFrame({k: v * (n // len(v)) for k, v in values.items()}))
    points = pd.concat(frames, ignore_index=True)
    return points if variables is None else points[list(variables)]


def main(argv: list[str] | None = None) -> int:
    """Entry point of `scaling-fit`: 0; or one line on stderr and exit code 2 on bad input, 1 on
    a bug (`scaling.console`, the policy of every console script)."""
    try:
        args = build_parser().parse_args(argv)
        if args.predict:  # a mistake here fails before a long fit, not after it
            if LAWS[args.law].form is None:
                raise UsageError(f"--predict: {args.law} predicts no loss")
            parse_points(args.predict, None, args.law)
        data = _prepare(args)
        fit = fit_law(
            data,
            args.law,
            x=args.x,
            offset=args.offset,
            method=args.method,
            flops_per_token=args.flops_per_token,
            mad_threshold=args.mad_threshold,
            profile=args.profile,
            cut=args.cut,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            level=args.level,
        )
        allocation = (
            compute_optimal(fit, args.flops_per_token or FLOPS_PER_TOKEN)
            if LAWS[args.law].optimum
            else None
        )
        points = parse_points(args.predict, fit.variables, args.law) if args.predict else None
        predicted = predict(fit, *points.to_numpy().T) if points is not None else None
        if args.json:
            out = fit.to_dict() | ({"allocation": allocation.to_dict()} if allocation else {})
            if args.count:
                chosen = CONVENTIONS[args.count]
                out["count"] = {"name": chosen.name, "definition": chosen.definition}
            if predicted is not None:
                out["predictions"] = _prediction_records(predicted, fit.variables)
            print(json.dumps(out, allow_nan=False))
        else:
            if args.count:
                print(f"counting {describe(args.count)}")
            print(_describe(fit, allocation.to_dict() if allocation else None))
            if predicted is not None:
                print(_describe_predictions(predicted, fit))
        if args.plot:
            plot_fit(fit, data, points).savefig(args.plot, dpi=120)
    except Exception as error:
        return exit_status(error, "scaling-fit", (FitInputError,))
    return 0


def _prepare(args: argparse.Namespace) -> pd.DataFrame:
    """Load, filter, pick and check the columns the law needs, deriving D or C if asked."""
    df = load_table(args.table)
    if args.query:
        try:
            df = df.query(args.query)
        except Exception as error:  # pandas raises many types for a bad expression
            raise FitInputError(f"bad --query {args.query!r}: {error}") from error
    law = LAWS[args.law]
    columns = {name: getattr(args, name) for name in CANONICAL}
    for name, column in law.results_columns.items():  # a run table's own, unless --NAME given
        if columns[name] == name and column in df:
            columns[name] = column
    if args.count:
        df = _recounted(df, args, columns)
    need = required_columns(
        args.law, x=args.x, bootstrap=args.bootstrap > 0, flops_per_token=args.flops_per_token
    )
    if args.derive:
        sources = ["N", "C"] if args.derive == "D" else ["N", "D"]
        need = list(dict.fromkeys([c for c in need if c != args.derive] + sources))
    data = select(df, need, columns, positive=law.positive, one_corpus=law.one_corpus)
    if args.derive:
        data = derive(data, args.derive, args.flops_per_token or FLOPS_PER_TOKEN)
    return data


def _recounted(df: pd.DataFrame, args: argparse.Namespace, columns: dict[str, str]) -> pd.DataFrame:
    """The table with N and C counted by `--count` (`analysis.counting.recount`), in the
    columns the fit reads; UsageError where the choice cannot apply."""
    given = [f"--{name} {columns[name]}" for name in ("N", "C") if columns[name] != name]
    if given:
        raise UsageError(f"--count {args.count} computes N and C itself: drop {', '.join(given)}")
    if args.law == "isoflop":
        raise UsageError(
            f"--count {args.count} recounts each run's C = 6·N·D, but isoflop groups runs by "
            "their nominal budget C: fit it on the table's own N and C (without --count)"
        )
    if args.derive:
        raise UsageError(f"--count {args.count} computes C = 6·N·D: drop --derive")
    return recount(df, args.count, d=columns["D"])


def _prediction_records(predicted: pd.DataFrame, variables: tuple[str, ...]) -> list[dict]:
    """`[{"N": …, "loss": …, "ci": [lo, hi] or None}]` for `--json`."""
    records = []
    for row in predicted.to_dict("records"):
        ci = [row["loss_lo"], row["loss_hi"]] if "loss_lo" in row else None
        records.append({v: row[v] for v in variables} | {"loss": row["loss"], "ci": ci})
    return jsonable(records)


def _describe_predictions(predicted: pd.DataFrame, fit: Fit) -> str:
    """One line per predicted point, with its interval or how to get one."""
    level = fit.diagnostics.get("bootstrap", {}).get("level", 0.95)
    lines = ["predictions:"]
    for row in predicted.to_dict("records"):
        at = ", ".join(f"{v}={row[v]:.4g}" for v in fit.variables)
        ci = (
            f"{level:.0%} interval [{row['loss_lo']:.4f}, {row['loss_hi']:.4f}]"
            if "loss_lo" in row
            else "no interval: add --bootstrap K"
        )
        lines.append(f"  {at}: loss {row['loss']:.4f}, {ci}")
    return "\n".join(lines)


def _stderr_method(fit: Fit) -> str:
    """How the standard errors and intervals were computed."""
    b = fit.diagnostics.get("bootstrap")
    if b and b["used"] > 1:
        return (
            f"standard errors and intervals: bootstrap, {b['k']} resamples over {b['unit']} "
            f"({b['used']} used), {b['level']:.0%} percentile intervals"
        )
    method = fit.diagnostics.get("stderr_method", "none")
    return f"standard errors: {method}; intervals: none (add --bootstrap K)"


def _describe(fit: Fit, allocation: dict | None) -> str:
    """A human-readable account of the fit."""
    d = fit.diagnostics
    lines = [
        f"{fit.law} fit on {fit.n_points} points: {fit.status}",
        f"formula: {LAWS[fit.law].formula}",
        fit.summary().to_string(float_format=lambda v: f"{v:.6g}"),
        _stderr_method(fit),
    ]
    facts = {
        k: d[k] for k in ("objective", "iterations", "n_starts", "n_at_best", "seconds") if k in d
    }
    if facts:
        lines.append(
            "diagnostics: "
            + ", ".join(
                f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items()
            )
        )
    if "bootstrap" in d:
        b = d["bootstrap"]
        lines.append(
            f"bootstrap: {b['used']}/{b['k']} resamples used over {b['unit']}, seed {b['seed']}, "
            f"{b['level']:.0%} percentile intervals; {b['degenerate']} degenerate, "
            f"{b['at_bound']} at a bound"
        )
        lines += [f"  {n} failed: {why}" for why, n in b["failures"].items()]
    if "budgets" in fit.tables:  # the envelope's grid is too long to print; it is in --json
        budgets = fit.tables["budgets"].to_string(index=False, float_format=lambda v: f"{v:.4g}")
        lines += ["budgets:", budgets]
    if d.get("dropped_budgets"):
        lines.append(f"dropped budgets: {d['dropped_budgets']}")
    for C, r in d.get("rejected", {}).items():
        sizes = ", ".join(f"{N:.4g}" for N in r["N"]) or "none"
        lines.append(
            f"rejected at C = {C} (|residual| > {d['mad_threshold']:g} robust SDs): N = "
            f"{sizes}; {r['rounds']} rounds, {r['stopped']}"
        )
    if allocation:
        p, k = allocation["params"], allocation["flops_per_token"]
        lines.append(
            f"compute-optimal: N_opt = G·(C/{k:g})^a, D_opt = (C/{k:g})^b/G with "
            f"G={p['G']:.4g}, a={p['a']:.4f}, b={p['b']:.4f}: {allocation['status']}"
        )
        for name, (lo, hi) in allocation["intervals"].items():
            lines.append(f"  {name}: [{lo:.4g}, {hi:.4g}]")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
