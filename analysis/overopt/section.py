"""The overoptimization part of the report (Gao, Schulman & Hilton 2022): α and β of
best-of-n and RL per RM size with intervals, gold and proxy reward against d per RM size,
the coefficients' trend with RM size beside Gao's qualitative findings, and DPO's gold
against d per β.

Reads the best-of-n tables of the study (`fit.read_bon`, which `scaling-report` calls on the
study directory), its RL runs and its DPO runs (stages `rl` and `dpo` in the results and
curves tables). fits.json gets "bon" and "rl", each keyed by RM size (non-embedding
parameters, as a string) with `{"alpha", "beta", "alpha_ci", "beta_ci", "n_points", ...}`,
"overoptimization" (the trends, the bootstrap units, the sources) and, when the study has
DPO runs with gold, "dpo" keyed by β (`{"points", "peak", "fit", "status", ...}`).
"""

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import plots
from analysis.overopt.fit import (
    FORMS,
    PARAMS,
    DpoCurve,
    bon_points,
    dpo_points,
    fit_bon,
    fit_dpo,
    fit_rl,
    rl_points,
    trend,
    versus_gao,
)
from analysis.overopt.plot import dpo_curves
from analysis.result import Fit, jsonable
from analysis.section import Section
from analysis.table import FitInputError

TITLE = "Reward-model overoptimization (Gao et al. 2022)"
NAMES = {"bon": "best-of-n", "rl": "RL (PPO)", "dpo": "DPO"}
DPO_KL = ("kl_to_ref, recorded by stage=dpo with stage.gold_samples: the mean over one "
          "temperature-1 sample of the policy per held-out SFT prompt of Σ (log π − log π_ref) "
          "over its new tokens, an unbiased estimate of KL(π‖π_ref) per response, the "
          "estimator PPO's kl_to_ref uses")
GAO = {
    ("bon", "alpha"): "grows with RM size",
    ("bon", "beta"): "shrinks with RM size",
    ("rl", "alpha"): "none stated (only α_bon, β_bon, β_RL move smoothly)",
    ("rl", "beta"): "shrinks with RM size",
}


def overopt_section(results: pd.DataFrame, curves: pd.DataFrame, bon: pd.DataFrame | None,
                    out_dir: str | Path, *, n_bootstrap: int, seed: int) -> Section | None:
    """The section, or None when the study holds no best-of-n tables (`bon`, per prompt,
    as `read_bon` returns them), no completed RL runs and no completed DPO runs with gold
    (stages `rl` and `dpo` in `results`, their evaluations in `curves`). Writes
    `overopt_bon.png`, `overopt_rl.png`, `overopt_trend.png` and `overopt_dpo.png` (those
    the data allow) into `out_dir`. A form the data cannot be fitted on is reported as
    skipped, not raised."""
    try:
        rl = rl_points(results, curves) if len(curves) else None
    except FitInputError as error:
        rl, rl_error = None, str(error)
    else:
        rl_error = None if rl is not None else "no completed stage=rl run with evaluations"
    try:
        dpo, dpo_error = (dpo_points(results, curves) if len(curves) else None), None
    except FitInputError as error:
        dpo, dpo_error = None, str(error)
    has_bon = bon is not None and len(bon) > 0
    if not has_bon and rl is None and rl_error.startswith("no completed") and dpo is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fits: dict[str, dict[float, Fit]] = {}
    skipped: dict[str, str] = {}
    points: dict[str, pd.DataFrame] = {}
    for form, data, fitter, why in (("bon", bon if has_bon else None, fit_bon,
                                     "no best-of-n tables (scaling-bon) below the study"),
                                    ("rl", rl, fit_rl, rl_error)):
        if data is None:
            skipped[form] = why
            continue
        try:
            fits[form] = fitter(data, n_bootstrap=n_bootstrap, seed=seed)
        except FitInputError as error:
            skipped[form] = str(error)
            continue
        points[form] = bon_points(data) if form == "bon" else data
    figures = []
    for form, fitted in fits.items():
        name = f"overopt_{form}.png"
        plots.overopt_curves(points[form], fitted, form, NAMES[form]).savefig(out / name,
                                                                             dpi=100)
        figures.append((name, _caption(form, points[form])))
    if fits:
        plots.overopt_trend(fits).savefig(out / "overopt_trend.png", dpi=100)
        figures.append(("overopt_trend.png", "α and β of each form against RM size, with "
                        "95% bootstrap intervals (Gao et al. 2022, figures 3 and 4)."))
    by_beta = fit_dpo(dpo, n_bootstrap=n_bootstrap, seed=seed) if dpo is not None else {}
    if by_beta:
        dpo_curves(by_beta).savefig(out / "overopt_dpo.png", dpi=100)
        figures.append(("overopt_dpo.png", _caption("dpo", dpo)))
    if dpo_error:
        skipped["dpo"] = dpo_error
    trends = {f"{form} {param}": trend(by_size, param) | {
        "gao": GAO[form, param], "verdict": versus_gao(form, param, trend(by_size, param))}
        for form, by_size in fits.items() for param in PARAMS}
    return Section(
        title=TITLE,
        html=_html(fits, skipped, trends, points, figures, n_bootstrap,
                   _dpo_html(by_beta, rl, results) if by_beta else ""),
        fits={**{form: _entries(fits.get(form, {})) for form in ("bon", "rl")},
              "overoptimization": jsonable({"forms": FORMS, "trends": trends,
                                            "skipped": skipped,
                                            "sources": _sources(points)}),
              **({"dpo": _dpo_entries(by_beta)} if by_beta else {})},
        caveats=_caveats(fits, skipped) + _dpo_caveats(by_beta),
        statuses=tuple((f"{NAMES[form]} R(d), RM N = {size:.4g}", fit.status)
                       for form, by_size in fits.items() for size, fit in by_size.items())
        + tuple((f"DPO R_RL(d), β = {beta:g}", curve.status)
                for beta, curve in by_beta.items())
        + tuple((f"{NAMES[form]} R(d)", f"skipped: {why}") for form, why in skipped.items()),
    )


def _key(size: float) -> str:
    """fits.json's key of an RM size: its parameter count as an integer string."""
    return str(round(float(size)))


def _entries(by_size: dict[float, Fit]) -> dict[str, Any]:
    """fits.json's "bon" or "rl": per RM size, α and β with intervals and the details."""
    return jsonable({_key(size): _fit_entry(fit) | {"rm_runs": fit.diagnostics["rm_runs"],
                                                    "runs": fit.diagnostics.get("runs")}
                     for size, fit in sorted(by_size.items())})


def _fit_entry(fit: Fit) -> dict[str, Any]:
    """α and β of one fitted form with their intervals, peak and bootstrap."""
    d = fit.diagnostics
    return {
        "alpha": fit.params["alpha"], "beta": fit.params["beta"],
        "alpha_ci": list(fit.intervals["alpha"]) if "alpha" in fit.intervals else None,
        "beta_ci": list(fit.intervals["beta"]) if "beta" in fit.intervals else None,
        "n_points": fit.n_points, "status": fit.status, "form": d["form"],
        "peak_d": d["peak_d"], "d_max": d["d_max"], "stderr": fit.stderr,
        "bootstrap": d.get("bootstrap"),
    }


def _dpo_entries(by_beta: dict[float, DpoCurve]) -> dict[str, Any]:
    """fits.json's "dpo": per β (as written, "0.1"), its runs, points along training, the
    peak, and R_RL(d) where fitted (its "beta" is β_RL, the fit's; DPO's is the key)."""
    columns = ["run", "step", "kl", "d", "gold_reward", "gold", "val_accuracy"]
    return jsonable({f"{beta:g}": {
        "dpo_beta": beta, "runs": sorted(curve.points["run"].unique()), "kl": DPO_KL,
        "points": curve.points[columns].to_dict("records"), "peak": curve.peak,
        "status": curve.status, "fit": _fit_entry(curve.fit) if curve.fit else None,
    } for beta, curve in sorted(by_beta.items())})


def _sources(points: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """What each form was fitted on: best-of-n directories and their prompts, RL runs."""
    out: dict[str, Any] = {}
    if "bon" in points:
        bon = points["bon"]
        out["bon"] = {source: {"rm_runs": sorted(g["rm_run"].unique()),
                               "n_prompts": int(g["n_prompts"].max()),
                               "n_max": int(g["n"].max())}
                      for source, g in bon.groupby("source")}
    if "rl" in points:
        out["rl"] = sorted(points["rl"]["run"].unique())
    return out


def _caption(form: str, points: pd.DataFrame) -> str:
    if form == "dpo":
        return ("DPO: gold reward of the policy's samples of held-out prompts (left, relative "
                "to the first evaluation; circled: each β's peak; lines: R_RL(d) = "
                "d·(α − β_RL·ln d) where fitted) and held-out preference accuracy (right) "
                "against d = √KL(π‖π_ref), the sampled KL; a colour per β, points joined in "
                "order of step.")
    if form == "bon":
        return ("Best-of-n: gold (left; lines: the fitted R_bon(d) = d·(α − β·d)) and proxy "
                "(right) reward of the proxy's favourite of n, relative to n = 1, against "
                f"d = √(ln n − (n − 1)/n), over {int(points['n_prompts'].max())} prompts; a "
                "colour per RM size.")
    return ("RL: gold (left; lines: the fitted R_RL(d) = d·(α − β·ln d)) and proxy (right) "
            "reward of the held-out samples at each evaluation, relative to the run's first, "
            "against d = √KL(π‖π_init); a colour per RM size.")


def _ci(fit: Fit, name: str) -> str:
    if name not in fit.intervals:
        return "—"
    return "[{}, {}]".format(*(_num(v) for v in fit.intervals[name]))


def _html(fits: dict[str, dict[float, Fit]], skipped: dict[str, str],
          trends: dict[str, dict], points: dict[str, pd.DataFrame],
          figures: list[tuple[str, str]], n_bootstrap: int, dpo_part: str) -> str:
    e = html.escape
    rows = []
    for size in sorted({s for by_size in fits.values() for s in by_size}):
        row: dict[str, Any] = {"RM N": f"{size:,.0f}"}
        for form, by_size in fits.items():
            fit = by_size.get(size)
            for param in PARAMS:
                row[f"{param}_{form}"] = _num(fit.params[param]) if fit else "—"
                row[f"{param}_{form} 95%"] = _ci(fit, param) if fit else "—"
            row[f"peak d_{form}"] = _num(fit.diagnostics["peak_d"]) if fit else "—"
            row[f"points_{form}"] = fit.n_points if fit else 0
            row[f"RMs_{form}"] = ", ".join(fit.diagnostics["rm_runs"]) if fit else ""
        rows.append(row)
    units = []
    for form, by_size in fits.items():
        boot = next(iter(by_size.values())).diagnostics.get("bootstrap")
        units.append(f"{NAMES[form]}: {boot['used']}/{boot['k']} resamples of {boot['unit']}"
                     if boot else f"{NAMES[form]}: no intervals (no --bootstrap)")
    trend_rows = [{"coefficient": name, "slope per decade of RM N": _num(t["slope"]),
                   "95%": "—" if not t["slope_ci"] else "[{}, {}]".format(
                       *(_num(v) for v in t["slope_ci"])),
                   "sizes": t["n_sizes"], "Gao et al. 2022": t["gao"], "ours": t["verdict"]}
                  for name, t in trends.items()]
    parts = [
        '<section class="overopt">', f"<h2>{e(TITLE)}</h2>",
        "<p>Gold reward relative to the initial policy against d = √KL(π‖π_init), fitted per "
        "proxy RM size (reward models of one size pooled) by least squares through the "
        "origin: best-of-n R(d) = d·(α − β·d) (KL = ln n − (n − 1)/n, the unbiased "
        "estimator over one pool per prompt), RL R(d) = d·(α − β·ln d) (every evaluation "
        f"of the RL runs). Intervals: {e('; '.join(units) or 'none')}.</p>",
    ]
    if skipped:
        parts.append("<ul>" + "".join(f"<li>{e(NAMES[f])}: not fitted: {e(why)}</li>"
                                      for f, why in skipped.items()) + "</ul>")
    if rows:
        parts += ['<div class="wide">', pd.DataFrame(rows).to_html(index=False, border=0),
                  "</div>", "<h3>Against RM size, beside Gao et al. 2022</h3>",
                  pd.DataFrame(trend_rows).to_html(index=False, border=0),
                  "<p>Gao et al. find that larger proxies are overoptimised later: α_bon "
                  "grows and β_bon and β_RL shrink smoothly (about linearly in log RM size); "
                  "they publish the coefficients only in figures. 'within noise': the "
                  "interval of our slope holds 0.</p>"]
    parts.append('<div class="figures">' + "".join(
        plots.figure_html(name, caption, wide=True) for name, caption in figures) + "</div>")
    if "bon" in points:
        shown = points["bon"].pivot_table(index=["n", "d"], columns="rm_run",
                                          values=["gold_reward", "proxy_reward"])
        parts += ["<h3>Best-of-n, measured (means over prompts)</h3>", '<div class="wide">',
                  shown.to_html(float_format=lambda v: f"{v:.4f}", border=0), "</div>"]
    parts += [dpo_part, "</section>"]
    return "\n".join(parts)


def _caveats(fits: dict[str, dict[float, Fit]], skipped: dict[str, str]) -> tuple[str, ...]:
    caveats = []
    for form, by_size in fits.items():
        if len(by_size) < 2:
            caveats.append(f"Overoptimization: {NAMES[form]} has reward models of one size "
                           "only: no trend with RM size.")
        for size, fit in by_size.items():
            d_star = fit.diagnostics["peak_d"]
            if np.isfinite(d_star) and d_star > fit.diagnostics["d_max"]:
                caveats.append(f"Overoptimization: {NAMES[form]} at RM N = {size:.3g} peaks "
                               f"at d = {d_star:.3g}, beyond the largest d measured "
                               f"({fit.diagnostics['d_max']:.3g}): the peak is extrapolated.")
    return tuple(caveats)


def _dpo_html(by_beta: dict[float, DpoCurve], rl: pd.DataFrame | None,
              results: pd.DataFrame) -> str:
    """DPO's part: what its KL is beside PPO's, a row per β, and (d, gold) at every step."""
    e = html.escape
    points = pd.concat([c.points for c in by_beta.values()], ignore_index=True)
    summary = []
    for beta, curve in sorted(by_beta.items()):
        fit, last = curve.fit, curve.points.sort_values("step").iloc[-1]
        summary.append({
            "β": f"{beta:g}", "runs": curve.points["run"].nunique(),
            "evaluations": len(curve.points), "d at the end": _num(last["d"]),
            "gold: first → last": f"{_num(curve.points['gold_reward'].iloc[0])} → "
                                  f"{_num(last['gold_reward'])}",
            "peak gold (d, step)": f"{_num(curve.peak['gold_reward'])} "
                                   f"({_num(curve.peak['d'])}, {curve.peak['step']:.0f})",
            "α": _num(fit.params["alpha"]) if fit else "—",
            "α 95%": _ci(fit, "alpha") if fit else "—",
            "β_RL": _num(fit.params["beta"]) if fit else "—",
            "β_RL 95%": _ci(fit, "beta") if fit else "—",
            "fitted peak d": _num(fit.diagnostics["peak_d"]) if fit else "—",
            "status": curve.status})
    along = points.pivot_table(index="step", columns="beta", values=["d", "gold_reward"])
    along = along.swaplevel(axis=1).sort_index(axis=1)
    along.columns = [f"β {beta:g}: {what}" for beta, what in along.columns]
    return "\n".join([
        '<div class="overopt-dpo">', "<h3>DPO: gold reward against √KL per β</h3>",
        f"<p>{e(_dpo_text(points, rl, results))}</p>",
        '<div class="wide">', pd.DataFrame(summary).to_html(index=False, border=0), "</div>",
        "<h4>Along training (d, gold reward)</h4>", '<div class="wide">',
        along.to_html(float_format=lambda v: f"{v:.4f}", border=0, na_rep="—"), "</div>",
        "</div>"])


def _dpo_text(points: pd.DataFrame, rl: pd.DataFrame | None, results: pd.DataFrame) -> str:
    """What DPO's x axis is and how far DPO moved beside PPO, from the records."""
    dpo_runs = results[results["run_id"].isin(points["run"])]
    text = (f"DPO (Rafailov et al. 2023) optimises the comparisons directly, with no proxy "
            f"reward model; its x axis is {DPO_KL}, against π_ref = the SFT parent, which is "
            "also PPO's π_init: d = √KL is on Gao's axis for both. It differs from PPO's in "
            "what is sampled: DPO's samples run to n_ctx // 2 new tokens"
            f"{_values(dpo_runs, 'model.n_ctx', lambda n: int(n) // 2)}")
    if rl is not None:
        rl_runs = results[results["run_id"].isin(rl["run"])]
        text += (f", PPO's to stage.max_new_tokens{_values(rl_runs, 'stage.max_new_tokens')}"
                 " (a KL per response grows with its length)")
    text += (f"; its prompts are stage.gold_samples{_values(dpo_runs, 'stage.gold_samples')} "
             "of the held-out split, and each evaluation draws new random numbers, so "
             "point-to-point changes include the draw's noise. The record's val_kl_to_ref, "
             "a log-ratio on the data's chosen responses, is not a KL of π and is not used. "
             f"DPO reached d ≤ {_num(points['d'].max())} and gold at most "
             f"{points['gold'].max():+.3g} over its first evaluation")
    if rl is not None:
        text += (f"; PPO reached d ≤ {_num(rl['d'].max())} and gold at most "
                 f"{rl['gold'].max():+.3g}")
    return text + "."


def _values(runs: pd.DataFrame, column: str, convert: Any = int) -> str:
    """" = 64" (or " = 32, 64") for the values of `column` in `runs`; "" without it."""
    if column not in runs or runs[column].isna().all():
        return ""
    return " = " + ", ".join(str(convert(v)) for v in sorted(runs[column].dropna().unique()))


def _dpo_caveats(by_beta: dict[float, DpoCurve]) -> tuple[str, ...]:
    caveats = []
    for beta, curve in by_beta.items():
        if curve.fit is None:
            continue
        d_star, d_max = curve.fit.diagnostics["peak_d"], curve.fit.diagnostics["d_max"]
        if np.isfinite(d_star) and d_star > d_max:
            caveats.append(f"Overoptimization: DPO at β = {beta:g} peaks (fitted) at d = "
                           f"{d_star:.3g}, beyond the largest d measured ({d_max:.3g}): the "
                           "peak is extrapolated.")
    return tuple(caveats)


def _num(value: Any) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3g}"
