"""The Kaplan part of the report: the figures (drawn by `analysis.plots`) and
the HTML section with the exponents against Kaplan's and one part per finding. Kept
apart so the fits and verdicts never depend on how they are shown. Not named `html`,
which would shadow the standard library module it uses.
"""

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import plots
from analysis.counting import CONVENTIONS, ratio
from analysis.kaplan.batch import noise_scale_points
from analysis.kaplan.constants import (
    CHINCHILLA_A,
    D_LEVEL_RATIO,
    KAPLAN,
    KAPLAN_A,
    KAPLAN_A_EQ15,
    MIN_EVIDENCE,
)
from analysis.kaplan.fits import ROUTES, LawFit, route_interval
from analysis.kaplan.tables import levels, transfer_curves
from analysis.kaplan.verdict import Finding, explain
from analysis.result import Fit, jsonable
from analysis.table import FitInputError
from analysis.uncertainty import LEVEL, percentile_interval

FIGURES_OF = {
    1: ("kaplan_loss_vs_params.png",),
    2: ("kaplan_L_D.png", "kaplan_L_C.png"),
    3: (),
    4: ("kaplan_curves_tokens.png",),
    5: ("kaplan_transfer.png",),
    6: ("kaplan_curves_tokens.png",),
    7: ("kaplan_curves_flops.png",),
    8: ("kaplan_noise_scale.png",),
}
# Figures shown in their own part of the report rather than in the gallery at its top.
SECTION_FIGURES = ("kaplan_icl.png", "kaplan_transfer.png", "kaplan_noise_scale.png")
WIDE_FIGURES = ("kaplan_loss_vs_params.png", "kaplan_icl.png", "kaplan_transfer.png")
CAPTIONS = {
    "kaplan_loss_vs_params.png": (
        "Final loss of every completed run against non-embedding N (left, with the L(N) fit "
        "on its selected points) and against all parameters (right); colour: depth, marker: "
        "D level (Kaplan Fig. 6)."
    ),
    "kaplan_curves_tokens.png": "Learning curves of the main series against tokens; colour: N.",
    "kaplan_curves_flops.png": (
        "Learning curves of the main series against compute, their lower envelope (the "
        "compute-efficient frontier) and the L(C) fit."
    ),
    "kaplan_L_D.png": (
        "L(D): early-stopped loss of one model size at several D, with the fit; grey: the "
        "other sizes, not fitted."
    ),
    "kaplan_L_C.png": "L(C) on the compute-efficient frontier: dark points fitted, grey not.",
    "kaplan_icl.png": "Validation loss per context position of every completed run (ICL).",
    "kaplan_transfer.png": (
        "Loss on the transfer corpus against in-distribution loss, every completed run; "
        "slope 1 is a constant offset (Kaplan Fig. 8)."
    ),
    "kaplan_noise_scale.png": (
        "Gradient noise scale at every evaluation against the loss there, colour: N, with "
        "its power-law fit (Kaplan Fig. 10)."
    ),
}


def _figure(name: str) -> str:
    return plots.figure_html(name, CAPTIONS[name], wide=name in WIDE_FIGURES)


def _figures(
    out: Path,
    runs: pd.DataFrame,
    cur: pd.DataFrame | None,
    ln: LawFit,
    ld: LawFit,
    lc: LawFit,
    icl: dict[str, Any] | None,
    transfer: Finding,
    curves: pd.DataFrame | None,
    every_curve: pd.DataFrame | None,
    batch: Finding,
) -> list[str]:
    """Write every figure the data allows; return their file names."""
    figures: dict[str, Figure] = {}
    if {"N", "D", "loss"} <= set(runs) and not runs.empty:
        figures["kaplan_loss_vs_params.png"] = plots.loss_vs_params(
            runs, ln.fit, levels(runs["D"], D_LEVEL_RATIO)
        )
    if cur is not None:
        figures["kaplan_curves_tokens.png"] = plots.run_curves(cur, "D", "tokens D")
        figures["kaplan_curves_flops.png"] = plots.run_curves(
            cur, "C", "compute C (FLOP)", lc.frontier, lc.fit, lc.points
        )
    if ld.fit is not None:
        others = runs[~runs["run_id"].isin(ld.info["run_ids"])]
        figures["kaplan_L_D.png"] = plots.power_law(
            ld.points,
            "D",
            ld.fit,
            "tokens D",
            f"L(D), early-stopped, N = {ld.info['N']:.3g} (grey: other sizes)",
            pure=ld.pure,
            context=others.assign(loss=others["early_loss"]),
        )
    if lc.fit is not None and lc.frontier is not None:
        rest = lc.frontier[~lc.frontier["C"].isin(lc.points["C"])]
        figures["kaplan_L_C.png"] = plots.power_law(
            lc.points,
            "C",
            lc.fit,
            "compute C (FLOP)",
            "L(C) on the compute-efficient frontier (grey: not fitted)",
            pure=lc.pure,
            context=rest,
        )
    if icl is not None and icl.get("status") == "ok":
        figures["kaplan_icl.png"] = plots.per_position(icl["table"], icl["scores"])
    fitted = {c: v for c, v in transfer.numbers.items() if "slope" in v}
    if fitted and "N" in runs:
        during = transfer_curves(curves, runs, next(iter(fitted)))
        figures["kaplan_transfer.png"] = plots.transfer(runs, fitted, during)
    if batch.numbers.get("method") == "gradient noise scale" and every_curve is not None:
        slope, intercept = batch.numbers["slope"], np.log(batch.numbers["B_star"])
        figures["kaplan_noise_scale.png"] = plots.noise_scale(
            noise_scale_points(every_curve), slope, intercept)
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=110)
    return list(figures)


def _html(
    runs: pd.DataFrame,
    main_count: int,
    laws: tuple[LawFit, ...],
    n_opt: dict[str, Any],
    findings: list[Finding],
    figures: list[str],
    icl: dict[str, Any] | None,
    evidence: dict[str, float],
    count: str | None = None,
    iso: LawFit | None = None,
) -> str:
    """The section: the exponents against Kaplan's, N_opt's exponent by Chinchilla's three
    approaches and under each counting convention, the figures, then one part per finding.
    `count` is the convention N and C were counted by (None: the table's own, non-embedding N
    and the recorded FLOPs); `iso` the IsoFLOP fit (`law_isoflop`)."""
    e = html.escape
    counted = (
        f"N and C are counted by the {count} convention ({CONVENTIONS[count].definition})"
        if count
        else "N counts non-embedding parameters, C the training FLOPs the runs recorded"
    )
    span = ", ".join(
        f"{c} ×{runs[c].max() / runs[c].min():.3g}"
        for c in ("N", "D", "C")
        if c in runs and len(runs) and runs[c].min() > 0
    )
    parts = [
        '<section class="kaplan">',
        "<h2>Kaplan et al. 2020: laws and findings</h2>",
        f"<p>{len(runs)} completed runs ({e(span)}); the laws are fitted on the "
        f"{main_count} of one batch size and one shape per size (the others are batch-size and "
        f"depth variations, for findings 8 and 1). {e(counted)}; losses are nats/token. "
        "Kaplan's constants hold for WebText2 with "
        "GPT-2's 50,257-token BPE and N up to 1.5e9; compare exponents, not constants, and "
        "mind the range.</p>",
        "<h3>Exponents against Kaplan's</h3>",
        _exponent_table(laws, n_opt),
        _approaches_html(n_opt, laws, iso),
        _conventions_html(n_opt.get("conventions", {}), runs),
        '<div class="figures">'
        + "".join(_figure(f) for f in figures if f not in SECTION_FIGURES)
        + "</div>",
        "<h3>The eight findings</h3>",
        f"<p>A finding is called reproduced only when it meets its criterion and the rows it "
        f"uses hold the minimum evidence: {MIN_EVIDENCE['runs']} or more completed runs, "
        f"{MIN_EVIDENCE['decades']:g} decade or more in the finding's variable, and at most "
        f"{MIN_EVIDENCE['max_epochs']:g} epoch (no repeated data). The whole study: "
        f"{evidence['runs']} runs, N over {evidence['decades_N']:.2g} decades, up to "
        f"{_num(evidence['max_epochs'])} epochs. Each finding states its criterion, the "
        "measured value and what its own rows hold.</p>",
        "<table><tr><th>#</th><th>finding</th><th>verdict</th></tr>"
        + "".join(
            f"<tr><td>{f.number}</td><td>{e(f.title)}</td><td>{e(f.verdict)}</td></tr>"
            for f in findings
        )
        + "</table>",
    ]
    for f in findings:
        parts += [
            f"<h4>{f.number}. {e(f.title)}: {e(f.verdict)}</h4>",
            f"<p>{e(f.evidence)}</p>",
            f'<p class="criterion">{e(explain(f))}</p>',
            f'<p class="verdict">Verdict: <strong>{e(f.verdict)}</strong>'
            + (f" ({e(f.reason)})" if f.reason else "")
            + ".</p>",
        ]
        if f.figures:
            links = ", ".join(f'<a href="{e(name)}">{e(name)}</a>' for name in f.figures)
            parts.append(f"<p>Figures: {links}</p>")
        parts += [_figure(name) for name in f.figures if name in SECTION_FIGURES]
    if icl is not None:
        parts.append("<h3>Loss per context position (in-context learning)</h3>")
        if icl.get("status") == "ok":
            slope = icl.get("score_slope_per_decade_N")
            parts.append(
                f"<p>{e(icl['definition'])}. Median α_T = {_num(icl['alpha_T_median'])}; ICL "
                f"score changes by {_num(slope)} nats per decade of N (more negative: the "
                "model uses its context more).</p>"
                + pd.DataFrame(icl["runs"]).to_html(
                    index=False, float_format=lambda v: f"{v:.4g}", border=0
                )
                + _figure("kaplan_icl.png")
            )
        else:
            parts.append(f"<p>{e(icl['status'])}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _exponent_table(laws: tuple[LawFit, ...], n_opt: dict[str, Any]) -> str:
    """One row per fitted constant: ours (with interval), how it was fitted, Kaplan's."""
    rows = []
    for law in laws:
        names = {"L(N,D)": ("alpha_N", "alpha_D"), "L(N,S)": ("alpha_N", "alpha_S")}
        for name in names.get(law.key, ("alpha",)):
            if law.fit is None:
                kaplan = _num(KAPLAN[law.key][name])
                rows.append((law.key, name, "—", f"skipped: {law.skipped}", "", kaplan))
                continue
            value = _num(law.fit.params[name]) + _interval(law.fit, name)
            how = (
                f"{law.info.get('form', law.law)}; {law.fit.n_points} points; "
                f"rms {law.rms():.2%}; {law.fit.status}"
            )
            rows.append((law.key, name, value, how, _selection(law), _num(KAPLAN[law.key][name])))
    rows.append(
        (
            "N_opt ∝ C^a",
            "a",
            _num(n_opt.get("a")),
            str(n_opt["status"]),
            str(n_opt.get("method") or ""),
            f"{KAPLAN_A} (eq 1.5 with Kaplan's constants: {KAPLAN_A_EQ15:.3f}; Chinchilla "
            f"{CHINCHILLA_A})",
        )
    )
    header = ("law", "constant", "ours", "fit", "fitted on", "Kaplan")
    return pd.DataFrame(rows, columns=header).to_html(index=False, border=0, escape=True)


APPROACHES = (  # Hoffmann et al. 2022's three, and Kaplan's eq 1.5 beside them
    ("1: envelope of learning curves", "envelope of learning curves",
     "the lowest loss any run reached at each C, and the size that reached it"),
    ("2: IsoFLOP profiles", "isoflop profiles",
     "the vertex of each budget's loss over N (runs with train.budget)"),
    ("3: parametric, E + A/N^α + B/D^β", "chinchilla allocation",
     "the law's minimum at C = 6·N·D (the L(N, D) runs)"),
    ("Kaplan eq 1.5, L(N, D)", "kaplan-nd allocation",
     "the law's minimum at C = 6·N·D (the L(N, D) runs)"),
)


def _approaches_html(n_opt: dict[str, Any], laws: tuple[LawFit, ...],
                     iso: LawFit | None) -> str:
    """N_opt ∝ C^a by Chinchilla's three approaches (and Kaplan's eq 1.5), side by side, each
    with its interval and status, from the same study."""
    lc = {law.key: law for law in laws}["L(C)"]
    rows = []
    for name, route, what in APPROACHES:
        found = n_opt.get(ROUTES[route])
        if found is None:
            why = iso.skipped if route == "isoflop profiles" and iso is not None else ""
            rows.append((name, "—", "—", f"not fitted{': ' + why if why else ''}", what))
            continue
        a = found["params"]["a"] if "params" in found else found["a"]
        ci = route_interval(n_opt, lc, route, iso)
        rows.append((name, _num(a), "[{:.3g}, {:.3g}]".format(*ci) if ci else "—",
                     str(found["status"]), what))
    header = ("approach", "a", "95% interval", "status", "N_opt from")
    return (
        "<h3>N_opt ∝ C^a by Chinchilla's three approaches</h3>"
        "<p>Hoffmann et al. 2022 found a ≈ 0.50 by all three; Kaplan's 0.73 came from the "
        "learning-curve frontier. Approaches that disagree here measure different things on "
        "too narrow a range, not one exponent.</p>"
        + pd.DataFrame(rows, columns=header).to_html(index=False, border=0, escape=True)
    )


def _conventions_html(conventions: dict[str, dict[str, Any]], runs: pd.DataFrame) -> str:
    """N_opt ∝ C^a under each counting convention, side by side, with who counted how."""
    if not conventions:
        return ""
    rows = []
    for name, c in conventions.items():
        ci = "—" if not c.get("a_ci") else "[{:.3g}, {:.3g}]".format(*c["a_ci"])
        routes = "; ".join(
            f"{route}: {_num(r['a'])}"
            + (" [{:.3g}, {:.3g}]".format(*r["a_ci"]) if r.get("a_ci") else "")
            for route, r in c.get("routes", {}).items()
        )
        moved = c.get("relabelled")
        relabelled = (f"{_num(moved['a'])} (e = {_num(moved['elasticity'])})" if moved
                      else "")
        rows.append((name, c["N"], _num(c.get("a")), ci, c.get("method") or "", c["status"],
                     relabelled, routes, c["used_by"]))
    header = ("convention", "N, C", "a", "95% interval", "from", "status",
              "kaplan's a recounted", "every route", "published numbers counted this way")
    try:
        times = ratio(runs, "standard", "kaplan")
        weight = (f" In these runs the unembedding makes N {times:.3g} times the non-embedding "
                  "count (median over the runs). It grows as d_model while the blocks grow as "
                  "12·n_layer·d_model², so N' ∝ N^e with e < 1 over these sizes, and the same "
                  "optima recounted give a' = e·a/(1 + (e − 1)·a) (\"kaplan's a recounted\"): "
                  "what counting alone changes, before any refit.")
    except FitInputError:
        weight = ""
    return (
        "<h3>N_opt ∝ C^a under three counting conventions</h3>"
        "<p>The same runs (the main series) and the same rule as the N_opt row above, with N "
        "and C = 6·N·D counted three ways (scaling-fit --count and scaling-report --count "
        "choose one for every fit). Kaplan's 0.73 counts the first way, Chinchilla's 0.50 "
        f"the third; Porian et al. 2024 give both of theirs.{html.escape(weight)}</p>"
        + '<div class="wide">'
        + pd.DataFrame(rows, columns=header).to_html(index=False, border=0, escape=True)
        + "</div>"
    )


def _selection(law: LawFit) -> str:
    """The rows a law was fitted on, as the headline states them."""
    return SELECTIONS.get(law.key) or law.info.get("selection") or law.info.get("method", "")


def _interval(fit: Fit, name: str) -> str:
    if name not in fit.intervals:
        return ""
    lo, hi = fit.intervals[name]
    return f" [{lo:.3g}, {hi:.3g}]"


def _num(value: Any) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3g}"


# The study's answers, one per question: (key, parameter, what it measures, published value).
HEADLINE = (
    ("L(N)", "alpha", "α_N of L(N)", KAPLAN["L(N)"]["alpha"]),
    ("L(D)", "alpha", "α_D of L(D)", KAPLAN["L(D)"]["alpha"]),
    ("L(C)", "alpha", "α_C of L(C_min)", KAPLAN["L(C)"]["alpha"]),
    (
        "L(N,D)",
        "alpha_N/alpha_D",
        "α_N/α_D of eq 1.5 (D ∝ N^(α_N/α_D) avoids overfitting)",
        KAPLAN["L(N,D)"]["alpha_N"] / KAPLAN["L(N,D)"]["alpha_D"],
    ),
    ("L(N,S)", "alpha_S", "α_S of eq 1.6", KAPLAN["L(N,S)"]["alpha_S"]),
)
SELECTIONS = {
    "L(N,D)": "main series (one batch size, one shape per size), early-stopped loss",
}


def headline(laws: tuple[LawFit, ...], n_opt: dict[str, Any],
             iso: LawFit | None = None) -> dict[str, dict[str, Any]]:
    """Each law's headline exponent with its interval, the points and rows it was fitted on,
    Kaplan's value and a verdict: `consistent` when the interval holds Kaplan's value,
    `differs` when it does not, `no interval` without a bootstrap, `not determined` when the
    fit gives no estimate, `skipped` when the data cannot support it."""
    by_key = {law.key: law for law in laws}
    out = {}
    for key, name, what, published in HEADLINE:
        law = by_key[key]
        entry: dict[str, Any] = {"parameter": name, "measures": what, "published": published}
        if law.fit is None:
            out[key] = entry | {"value": None, "ci": None, "n_points": 0,
                                "selection": "", "status": f"skipped: {law.skipped}"}
            out[key]["verdict"] = "skipped"
            continue
        value, ci = _value(law.fit, name)
        selection = _selection(law)
        if key == "L(D)":
            selection += f" (N = {law.info['N']:.3g})"
        out[key] = entry | {"value": value, "ci": ci, "n_points": law.fit.n_points,
                            "selection": selection, "status": law.fit.status}
        out[key]["verdict"] = _verdict(law.fit.usable, ci, published)
    route = n_opt.get("method")
    ci = route_interval(n_opt, by_key["L(C)"], route, iso)
    n_points = {"kaplan-nd allocation": by_key["L(N,D)"], "envelope of learning curves":
                by_key["L(C)"], "isoflop profiles": iso}.get(route)
    out["N_opt(C)"] = {
        "parameter": "a", "measures": "a of N_opt ∝ C^a", "published": KAPLAN_A,
        "value": n_opt.get("a"), "ci": ci,
        "n_points": n_points.fit.n_points if n_points and n_points.fit else 0,
        "selection": route or "", "status": n_opt["status"],
        "verdict": "skipped" if n_opt.get("a") is None
        else _verdict(n_opt["status"].startswith("ok"), ci, KAPLAN_A),
    }
    return jsonable(out)


def _value(fit: Fit, name: str) -> tuple[float, list[float] | None]:
    """A parameter, or the ratio `a/b` of two, and its bootstrap interval when there is one."""
    if "/" not in name:
        interval = fit.intervals.get(name)
        return fit.params[name], list(interval) if interval else None
    top, bottom = name.split("/")
    value = fit.params[top] / fit.params[bottom]
    if fit.samples is None or len(fit.samples) < 2:
        return value, None
    level = fit.diagnostics.get("bootstrap", {}).get("level", LEVEL)
    draws = (fit.samples[top] / fit.samples[bottom]).to_numpy(float)
    return value, [float(v) for v in percentile_interval(draws, level)]


def _verdict(usable: bool, ci: list[float] | None, published: float) -> str:
    if not usable:
        return "not determined"
    if ci is None or None in ci:
        return "no interval"
    return "consistent" if ci[0] <= published <= ci[1] else "differs"
