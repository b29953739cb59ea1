"""`scaling-predict FITS_JSON`: a fitted L(N, D) answers "what loss at N, D?" and "what should I
train with C FLOPs?", with bootstrap intervals.

The file may be a report's fits.json (every L(N, D) fit in it is found wherever it sits:
"L(N,D)", "diagnostics.chinchilla", ...) or one a user writes by hand. The minimal hand-written
file is one fit:

    {"law": "chinchilla", "params": {"E": 1.69, "A": 406.4, "B": 410.7,
                                     "alpha": 0.34, "beta": 0.28}}

with `law` any L(N, D) of `analysis.registry` (chinchilla: E + A/N^α + B/D^β; kaplan-nd: Kaplan
eq 1.5 with N_c, D_c, alpha_N, alpha_D). Optional keys: "samples" ({param: [draws]}, bootstrap
draws of the parameters, one list per parameter, all of one length: without them there are no
intervals), "level" (of the intervals, default 0.95) and "flops_per_token" (k of C = k·N·D,
default 6). Several fits in one file are {name: fit, ...}; `--law NAME` picks one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import registry
from analysis.allocation import compute_optimal, predict
from analysis.result import Fit, jsonable
from analysis.table import FLOPS_PER_TOKEN
from analysis.uncertainty import LEVEL, percentile_interval
from scaling.console import ArgumentParser, UsageError, exit_status

PREFERRED = "L(N,D)"  # the report's own answer, chosen when --law is not given


def nd_laws() -> tuple[str, ...]:
    """The laws of `analysis.registry` that give a loss and a compute-optimal split from N, D."""
    return tuple(name for name, law in registry.LAWS.items()
                 if law.optimum is not None and law.form is not None)


@dataclass(frozen=True)
class NamedFit:
    """One L(N, D) fit found in a fits file: where it sits, and the fit with its draws."""

    name: str  # its key path in the file ("" for a file that is one fit)
    fit: Fit
    flops_per_token: float


def find_fits(data: Any) -> list[NamedFit]:
    """Every L(N, D) fit in a fits.json document (a report's or a hand-written one), by key
    path; the allocations a report stores beside its fits (params G, a, b) are not fits."""
    return [NamedFit(name, _as_fit(entry), _flops_per_token(entry))
            for name, entry in _walk(data, "")]


def _walk(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    if not isinstance(node, dict):
        return
    law = node.get("law")
    if law in nd_laws() and isinstance(node.get("params"), dict) and set(
            registry.get(law).params) <= set(node["params"]):
        yield path, node
        return
    for key, child in node.items():
        yield from _walk(child, f"{path}.{key}" if path else str(key))


def _as_fit(entry: dict) -> Fit:
    law = entry["law"]
    names = registry.get(law).params
    params = {k: float(entry["params"][k]) for k in names}
    samples = entry.get("samples")
    draws = None
    if isinstance(samples, dict) and all(k in samples for k in names):
        draws = pd.DataFrame({k: np.asarray(samples[k], float) for k in names}).dropna()
    level = entry.get("level") or entry.get("diagnostics", {}).get("bootstrap", {}).get(
        "level", LEVEL)
    return Fit(law=law, params=params, residuals=np.array([]),
               n_points=int(entry.get("n_points") or 0), variables=("N", "D"),
               status=entry.get("status", "ok"),
               diagnostics={"bootstrap": {"level": float(level)}}, samples=draws)


def _flops_per_token(entry: dict) -> float:
    allocation = entry.get("allocation")
    stored = entry.get("flops_per_token") or (
        allocation.get("flops_per_token") if isinstance(allocation, dict) else None)
    return float(stored or FLOPS_PER_TOKEN)


def choose(fits: list[NamedFit], law: str | None, source: str) -> NamedFit:
    """The fit `--law` names (a key path, or a law name when one fit has it); without it the
    only fit, or the report's own "L(N,D)". UsageError (one line) otherwise."""
    names = ", ".join(f.name or f.fit.law for f in fits)
    if not fits:
        raise UsageError(f"{source} holds no L(N, D) fit (laws {', '.join(nd_laws())} with "
                         "their params): nothing to predict from")
    if law is None:
        if len(fits) == 1:
            return fits[0]
        preferred = [f for f in fits if f.name == PREFERRED]
        if preferred:
            return preferred[0]
        raise UsageError(f"{source} holds {len(fits)} L(N, D) fits ({names}): pick one with "
                         "--law")
    matches = [f for f in fits if f.name == law] or [f for f in fits if f.fit.law == law]
    if len(matches) != 1:
        why = "no fit" if not matches else f"{len(matches)} fits"
        raise UsageError(f"--law {law}: {source} has {why} of that name or law (it has "
                         f"{names})")
    return matches[0]


def at_point(named: NamedFit, N: float, D: float) -> dict[str, Any]:
    """The predicted loss at (N, D), with its interval where the fit has draws."""
    row = predict(named.fit, [N], [D]).iloc[0]
    return {"N": N, "D": D, "C": named.flops_per_token * N * D, "tokens_per_param": D / N,
            "loss": float(row["loss"]), "loss_interval": _interval(row, "loss")}


def at_budget(named: NamedFit, C: float) -> dict[str, Any]:
    """The compute-optimal N, D and tokens per parameter at C = k·N·D, and the loss the law
    predicts there; each draw's interval comes from that draw's own optimum and loss."""
    fit = named.fit
    allocation = compute_optimal(fit, named.flops_per_token)
    row = allocation.at([C]).iloc[0]
    out = {"C": C, "flops_per_token": named.flops_per_token}
    for key in ("N_opt", "D_opt", "tokens_per_param"):
        out[key], out[f"{key}_interval"] = float(row[key]), _interval(row, key)
    out["loss"] = float(registry.evaluate(fit.law, fit.params, row["N_opt"], row["D_opt"]))
    out["loss_interval"] = None
    if allocation.samples is not None:
        x = C / named.flops_per_token
        s = allocation.samples
        N_opt = s["G"].to_numpy() * x ** s["a"].to_numpy()
        D_opt = x ** s["b"].to_numpy() / s["G"].to_numpy()
        losses = np.array([registry.evaluate(fit.law, p, n, d) for p, n, d in zip(
            fit.samples.to_dict("records"), N_opt, D_opt, strict=True)], float)
        lo, hi = percentile_interval(losses[:, None], allocation.level)
        out["loss_interval"] = [float(lo[0]), float(hi[0])]
    out["status"] = allocation.status
    return out


def _interval(row: pd.Series, key: str) -> list[float] | None:
    if f"{key}_lo" not in row:
        return None
    return [float(row[f"{key}_lo"]), float(row[f"{key}_hi"])]


def build_parser() -> argparse.ArgumentParser:
    """`scaling-predict`'s options."""
    parser = ArgumentParser(prog="scaling-predict", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fits", type=Path, metavar="FITS_JSON",
                        help="a report's fits.json, or a hand-written fit (see above)")
    parser.add_argument("--N", type=float, help="parameters (as the fit counted them)")
    parser.add_argument("--D", type=float, help="training tokens")
    parser.add_argument("--budget", type=float, metavar="C",
                        help="training FLOPs: the compute-optimal N and D and their loss")
    parser.add_argument("--law", help="which fit, by key path (L(N,D), "
                        "diagnostics.chinchilla, ...) or law name, when the file has several")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not JSON: {error}") from None


def _check(args: argparse.Namespace) -> None:
    if (args.N is None) != (args.D is None):
        raise UsageError("--N and --D go together: the loss at N parameters and D tokens")
    if args.N is None and args.budget is None:
        raise UsageError("expected --N and --D (a loss), or --budget C (an allocation)")
    for name in ("N", "D", "budget"):
        value = getattr(args, name)
        if value is not None and not (np.isfinite(value) and value > 0):
            raise UsageError(f"--{name} {value:g}: expected a positive number")


def _fmt(value: float, interval: list[float] | None, digits: int = 3) -> str:
    text = f"{value:.{digits}g}"
    return text if interval is None else f"{text} [{interval[0]:.{digits}g}, " \
                                         f"{interval[1]:.{digits}g}]"


def _text(named: NamedFit, answers: dict[str, Any]) -> str:
    fit = named.fit
    level = fit.diagnostics["bootstrap"]["level"]
    draws = 0 if fit.samples is None else len(fit.samples)
    params = ", ".join(f"{k}={v:.4g}" for k, v in fit.params.items())
    lines = [f"{named.name or 'fit'}: {fit.law} {params}; "
             + (f"{level:.0%} intervals from {draws} bootstrap draws" if draws > 1
                else "no bootstrap draws: no intervals")]
    if "point" in answers:
        p = answers["point"]
        lines.append(f"N={p['N']:.3g} D={p['D']:.3g} (C={p['C']:.3g}, "
                     f"{p['tokens_per_param']:.3g} tokens/param): loss "
                     f"{_fmt(p['loss'], p['loss_interval'], 4)}")
    if "budget" in answers:
        b = answers["budget"]
        lines.append(f"C={b['C']:.3g} FLOPs (C = {b['flops_per_token']:g}·N·D): "
                     f"N_opt {_fmt(b['N_opt'], b['N_opt_interval'])}, "
                     f"D_opt {_fmt(b['D_opt'], b['D_opt_interval'])}, "
                     f"{_fmt(b['tokens_per_param'], b['tokens_per_param_interval'])} "
                     f"tokens/param, loss {_fmt(b['loss'], b['loss_interval'], 4)}"
                     + ("" if b["status"] == "ok" else f" [{b['status']}]"))
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, read, predict: the answers as a JSON-ready dict (what --json prints)."""
    args = build_parser().parse_args(argv)
    _check(args)
    named = choose(find_fits(_read(args.fits)), args.law, str(args.fits))
    answers: dict[str, Any] = {"fit": named.name or None, "law": named.fit.law,
                               "params": named.fit.params,
                               "level": named.fit.diagnostics["bootstrap"]["level"],
                               "draws": 0 if named.fit.samples is None
                               else len(named.fit.samples)}
    if args.N is not None:
        answers["point"] = at_point(named, args.N, args.D)
    if args.budget is not None:
        answers["budget"] = at_budget(named, args.budget)
    print(json.dumps(jsonable(answers), indent=2) if args.json else _text(named, answers))
    return answers


def main(argv: list[str] | None = None) -> int:
    """Entry point of `scaling-predict`: 0; or one line on stderr and exit code 2 on bad
    input (no L(N, D) fit, a non-positive budget), 1 on a bug."""
    try:
        run(argv)
    except Exception as error:
        return exit_status(error, "scaling-predict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
