"""`scaling-fit TABLE --law LAW`: fit one law to a CSV or Parquet table from the shell."""

import argparse
import json
import sys

import pandas as pd

from analysis.allocation import compute_optimal
from analysis.plots import plot_fit
from analysis.registry import LAWS, fit_law, required_columns
from analysis.result import Fit
from analysis.table import CANONICAL, FLOPS_PER_TOKEN, FitInputError, derive, load_table, select
from scaling.console import ArgumentParser, exit_status


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
    parser.add_argument("--law", required=True, choices=tuple(LAWS))
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
        default="grid",
        help="chinchilla: published L-BFGS grid, or variable projection",
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
    parser.add_argument("--query", metavar="EXPR", help="keep rows matching a pandas query")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="K", help="resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", type=float, default=0.95, help="interval coverage")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="PNG", help="write the figure here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `scaling-fit`: 0; or one line on stderr and exit code 2 on bad input, 1 on
    a bug (`scaling.console`, the policy of every console script)."""
    try:
        args = build_parser().parse_args(argv)
        data = _prepare(args)
        fit = fit_law(
            data,
            args.law,
            x=args.x,
            offset=args.offset,
            method=args.method,
            flops_per_token=args.flops_per_token,
            mad_threshold=args.mad_threshold,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            level=args.level,
        )
        allocation = (
            compute_optimal(fit, args.flops_per_token or FLOPS_PER_TOKEN)
            if LAWS[args.law].optimum
            else None
        )
        if args.json:
            out = fit.to_dict() | ({"allocation": allocation.to_dict()} if allocation else {})
            print(json.dumps(out, allow_nan=False))
        else:
            print(_describe(fit, allocation.to_dict() if allocation else None))
        if args.plot:
            plot_fit(fit, data).savefig(args.plot, dpi=120)
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
    columns = {name: getattr(args, name) for name in CANONICAL}
    need = required_columns(
        args.law, x=args.x, bootstrap=args.bootstrap > 0, flops_per_token=args.flops_per_token
    )
    if args.derive:
        sources = ["N", "C"] if args.derive == "D" else ["N", "D"]
        need = list(dict.fromkeys([c for c in need if c != args.derive] + sources))
    data = select(df, need, columns)
    if args.derive:
        data = derive(data, args.derive, args.flops_per_token or FLOPS_PER_TOKEN)
    return data


def _describe(fit: Fit, allocation: dict | None) -> str:
    """A human-readable account of the fit."""
    d = fit.diagnostics
    lines = [
        f"{fit.law} fit on {fit.n_points} points: {fit.status}",
        fit.summary().to_string(float_format=lambda v: f"{v:.6g}"),
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
