"""Verdicts on Kaplan's qualitative findings 1 to 7, each a `Finding` with its evidence
and the numbers behind it, judged from the law fits and the tables. Finding 8, the
critical batch size, has two methods of its own and lives in `batch`.
"""

from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import ols
from analysis.kaplan.constants import (
    D_LEVEL_RATIO,
    DEGENERATE_TERM,
    KAPLAN_STOP_GAP,
    MAX_EXPONENT,
    N_LEVEL_RATIO,
    SAMPLE_TARGET_SLACK,
    SHAPE_FACTOR,
    SMOOTH_DECADES,
    SMOOTH_POINTS,
    SMOOTH_RMS,
    STOP_GAP,
    TRANSFER_PREFIXES,
    TRANSFER_SLOPE,
)
from analysis.kaplan.fits import LawFit
from analysis.kaplan.tables import levels
from analysis.kaplan.verdict import Finding, Selection


def finding_shape(runs: pd.DataFrame, ln: LawFit, ld: LawFit, lc: LawFit) -> Finding:
    """(1) Depths at one N and D against the effect of N: the spread across shapes, corrected
    to a common N with the fitted α_N, expressed as the change in N that moves loss as much."""
    alphas = {
        key: law.pure.params["alpha"]
        for key, law in (("N", ln), ("D", ld), ("C", lc))
        if law.pure is not None
    }
    scale = ", ".join(f"α_{k} = {v:.3f}" for k, v in alphas.items()) or "no scale law fitted"
    scale = f"Scale: {scale} (pure form; Kaplan 0.076, 0.095, 0.050)."
    if not {"model.n_layer", "N", "D", "loss"} <= set(runs):
        return Finding(1, "not measured", scale, "no model.n_layer, N, D or loss column")
    alpha = alphas.get("N")
    groups = shape_groups(runs, alpha)
    if not groups:
        reason = "no two depths trained at the same N and D (run the shape sweep)"
        return Finding(1, "not measured", scale, reason)
    widest = max(groups, key=lambda g: g["loss_spread"])
    numbers = {"alpha": alphas, "shape_groups": groups}
    used = {run for g in groups for run in g["run_ids"]} | set(ln.run_ids())
    selection = Selection.of(runs[runs["run_id"].astype(str).isin(used)], ["N"])
    spread = widest["loss_spread"]
    evidence = (
        f"At N ≈ {widest['N']:.3g}, D ≈ {widest['D']:.3g}, depths {widest['n_layer']} span "
        f"{spread:.1%} in loss (N varies ×{widest['N_ratio']:.2f} within the group; "
        f"{widest['D'] / widest['N']:.2g} tokens per parameter)."
    )
    if widest["corr_loss_n_params"] is not None:
        evidence += (
            f" All parameters vary ×{widest['n_params_ratio']:.2f} there, and loss correlates "
            f"with them at r = {widest['corr_loss_n_params']:.2f} (Kaplan Fig. 6: counting "
            "embeddings should not line the depths up)."
        )
    evidence += " " + scale
    if alpha is None or alpha <= 0:
        verdict = "partly" if alpha is None else "not reproduced"
        reason = "no L(N) fit to weigh the spread against" if alpha is None else "no N effect"
        measured = f"a {spread:.1%} spread" + ("" if alpha is None else f", α_N = {alpha:.3f}")
        return Finding(
            1, verdict, evidence, reason, numbers, measured=measured, selection=selection
        )
    factor = float(np.exp(spread / alpha))
    numbers["equivalent_N_factor"] = factor
    measured = f"×{factor:.3g} in N (a {spread:.1%} spread, α_N = {alpha:.3f})"
    reason = "Kaplan: a few % over a 40× range of aspect ratio"
    return _graded(1, factor, SHAPE_FACTOR, False, measured, evidence, reason, numbers,
                   selection)


def shape_groups(runs: pd.DataFrame, alpha_N: float | None) -> list[dict[str, Any]]:
    """Runs at one N level and D level with 2+ depths: their loss spread in ln L (moved to
    the group's median N along L(N) when α_N is known) and how loss tracks all parameters."""
    groups = []
    keys = [levels(runs["N"], N_LEVEL_RATIO), levels(runs["D"], D_LEVEL_RATIO)]
    for _, group in runs.groupby(keys):
        if group["model.n_layer"].nunique() < 2:
            continue
        lnL = np.log(group["loss"].to_numpy(float))
        if alpha_N is not None:
            lnL = lnL + alpha_N * np.log(group["N"] / group["N"].median()).to_numpy()
        total = (
            "n_params" in group and len(group) >= 3 and np.ptp(lnL) > 0
            and group["n_params"].nunique() > 1  # a correlation needs both to vary
        )
        groups.append(
            {
                "run_ids": sorted(map(str, group["run_id"])),
                "N": group["N"].median(),
                "D": group["D"].median(),
                "n_layer": sorted(group["model.n_layer"].unique().tolist()),
                "loss_spread": float(np.ptp(lnL)),
                "N_ratio": float(group["N"].max() / group["N"].min()),
                "n_params_ratio": float(group["n_params"].max() / group["n_params"].min())
                if total
                else None,
                "corr_loss_n_params": float(np.corrcoef(np.log(group["n_params"]), lnL)[0, 1])
                if total
                else None,
            }
        )
    return groups


def finding_smooth(ln: LawFit, ld: LawFit, lc: LawFit) -> Finding:
    """(2) Each of L(N), L(D), L(C): residuals, points and the decades it spans."""
    fits, good, numbers = (ln, ld, lc), [], {}
    for law in fits:
        if law.fit is None:
            numbers[law.key] = {"status": f"skipped: {law.skipped}"}
            continue
        x = law.fit.variables[0]
        decades = float(np.log10(law.points[x].max() / law.points[x].min()))
        entry = {
            "rms": law.rms(),
            "decades": decades,
            "n_points": law.fit.n_points,
            "status": law.fit.status,
        }
        numbers[law.key] = entry
        if law.usable() and entry["rms"] <= SMOOTH_RMS:
            good.append(decades >= SMOOTH_DECADES and entry["n_points"] >= SMOOTH_POINTS)
    evidence = (
        "; ".join(
            f"{k}: rms {v['rms']:.2%} over {v['decades']:.2f} decades, {v['n_points']} points"
            if "rms" in v
            else f"{k}: {v['status']}"
            for k, v in numbers.items()
        )
        + " (Kaplan: N over 6 decades, D over 3, C over 8)."
    )
    fitted = [law for law in fits if law.fit is not None]
    if not fitted:
        return Finding(2, "not measured", evidence, "no law could be fitted", numbers)
    narrowest = min(fitted, key=lambda law: numbers[law.key]["decades"])
    selection = Selection(
        tuple(sorted({run for law in fitted for run in law.run_ids()})),
        narrowest.fit.variables[0],
        numbers[narrowest.key]["decades"],
    )
    met = len(good) == 3 and all(good)
    measured = (
        f"{len(good)} of 3 within {SMOOTH_RMS:.0%} rms, {sum(good)} of them over "
        f"{SMOOTH_DECADES:g}+ decade and {SMOOTH_POINTS}+ points"
    )
    if met:
        verdict, reason = "reproduced", ""
    elif good:
        verdict = "partly"
        reason = "too little range to call it a power law over orders of magnitude"
        if len(good) < 3:
            reason = "not every law fits smoothly, or one is missing"
    else:
        verdict, reason = "not reproduced", ""
    return Finding(
        2, verdict, evidence, reason, numbers, measured=measured, met=met, selection=selection
    )


def finding_overfitting(lnd: LawFit, runs: pd.DataFrame) -> Finding:
    """(3) Whether eq 1.5 describes all runs, and its exponents against Kaplan's."""
    if lnd.fit is None:
        return Finding(3, "not measured", "No L(N, D) fit.", lnd.skipped)
    p = lnd.fit.params
    ratio = p["alpha_N"] / p["alpha_D"]
    numbers = {"rms": lnd.rms(), "alpha_N/alpha_D": ratio, "status": lnd.fit.status}
    epochs = float(runs["epochs"].max()) if "epochs" in runs else None
    evidence = (
        f"Eq 1.5 on {lnd.fit.n_points} runs ({runs['N'].nunique()} N × {runs['D'].nunique()} D): "
        f"α_N = {p['alpha_N']:.3f}, α_D = {p['alpha_D']:.3f} (Kaplan 0.076, 0.103), "
        f"α_N/α_D = {ratio:.2f} (Kaplan 0.74), rms {lnd.rms():.2%}, status {lnd.fit.status}."
        + (
            f" No run repeats data (at most {epochs:.2f} epochs): the penalty measured is "
            "finite D, as in Kaplan."
            if epochs is not None and epochs <= 1
            else ""
        )
    )
    runaway = [name for name in ("alpha_N", "alpha_D") if p[name] > MAX_EXPONENT]
    flaw = (
        f"{' and '.join(runaway)} ran past {MAX_EXPONENT:g}: the fit collapses eq 1.5 to "
        "whichever term is larger at each run, so the data do not pin that exponent down "
        "(too little overlap between the N-limited and the D-limited regimes)"
        if runaway
        else ""
    )
    detail = f"α_N = {p['alpha_N']:.3f}, α_D = {p['alpha_D']:.3f}"
    selection = Selection.of(runs[runs["run_id"].astype(str).isin(lnd.run_ids())], ["N", "D"])
    return _fit_verdict(3, lnd, detail, flaw, evidence, numbers, selection)


def finding_learning_curves(lns: LawFit) -> Finding:
    """(4) Whether eq 1.6 describes the learning curves after warmup."""
    if lns.fit is None:
        return Finding(4, "not measured", "No L(N, S) fit.", lns.skipped)
    p = lns.fit.params
    numbers = {"rms": lns.rms(), "status": lns.fit.status}
    evidence = (
        f"Eq 1.6 on {lns.fit.n_points} evaluations: α_N = {p['alpha_N']:.3f}, "
        f"α_S = {p['alpha_S']:.3f} (Kaplan 0.077, 0.76), rms {lns.rms():.2%}, "
        f"status {lns.fit.status}. S is steps at one batch size, not S_min; with a cosine "
        "schedule as long as the run (the trainer's default) the curve's end carries the decay."
    )
    # (S_c/S)^α_S barely moving over the steps fitted means the S term became a constant.
    S = lns.points["S"]
    numbers["S_term_change"] = p["alpha_S"] * float(np.log(S.max() / S.min()))
    flaw = (
        "the step term (S_c/S)^α_S is nearly constant: eq 1.6 fits as an offset only"
        if numbers["S_term_change"] < DEGENERATE_TERM
        else ""
    )
    detail = f"α_S·ln(S_max/S_min) = {numbers['S_term_change']:.2g}"
    selection = Selection.of(lns.points, ["N", "S"], run="run")
    return _fit_verdict(4, lns, detail, flaw, evidence, numbers, selection)


def finding_transfer(runs: pd.DataFrame) -> Finding:
    """(5) Loss on a second corpus against in-distribution loss: slope 1 is a constant offset."""
    columns = [c for c in runs if str(c).startswith(TRANSFER_PREFIXES)]
    if not columns or "loss" not in runs:
        return Finding(
            5,
            "not measured",
            "No second-corpus loss in the results.",
            "needs a transfer_loss or val_loss_<corpus> column: every run is "
            "evaluated on its own corpus only",
        )
    numbers, grades, used = {}, [], []
    for column in columns:
        both = runs[["loss", column]].apply(pd.to_numeric, errors="coerce").dropna()
        if len(both) < 3:
            numbers[column] = {"status": f"skipped: {len(both)} runs have it"}
            continue
        used.append(both.index)
        slope, intercept, se, _ = ols(both["loss"].to_numpy(), both[column].to_numpy())
        offset = both[column] - both["loss"]
        numbers[column] = {
            "slope": slope,
            "intercept": intercept,
            "slope_stderr": se,
            "offset_mean": offset.mean(),
            "offset_std": offset.std(ddof=1),
            "n_runs": len(both),
        }
        grades.append(_grade(abs(slope - 1), TRANSFER_SLOPE, higher_is_better=False))
    evidence = "; ".join(
        f"{c}: slope {v['slope']:.2f} ± {v['slope_stderr']:.2f}, offset "
        f"{v['offset_mean']:.3f} ± {v['offset_std']:.3f} nats over {v['n_runs']} runs"
        if "slope" in v
        else f"{c}: {v['status']}"
        for c, v in numbers.items()
    )
    if not grades:
        return Finding(
            5, "not measured", evidence, "fewer than 3 runs carry a transfer loss", numbers
        )
    verdict = grades[0] if len(set(grades)) == 1 else "partly"
    measured = ", ".join(
        f"{c}: {abs(v['slope'] - 1):.2f}" for c, v in numbers.items() if "slope" in v
    )
    rows = runs.loc[sorted(set().union(*used))]
    return Finding(
        5,
        verdict,
        evidence,
        "",
        numbers,
        measured=measured,
        met=set(grades) == {"reproduced"},
        selection=Selection.of(rows, ["N"]),
    )


def finding_sample_efficiency(curves: pd.DataFrame | None, ln: LawFit, no_curves: str) -> Finding:
    """(6) Tokens and steps each size needs to reach the same loss, on runs of equal length.

    The runs are those of L(N) (one D, so one schedule length) and the targets the highest
    loss every one of them reaches, and 5% above it.
    """
    if curves is None:
        return Finding(6, "not measured", "No learning curves.", no_curves)
    if ln.fit is not None:
        cur = curves[curves["run"].isin(ln.info["run_ids"])]
    else:
        longest = curves.groupby("run")["S"].max()
        cur = curves[
            curves["run"].isin(longest.groupby(curves.groupby("run")["N"].first()).idxmax())
        ]
    size = levels(cur.groupby("run")["N"].first(), N_LEVEL_RATIO)
    if size.nunique() < 2:
        reason = "needs curves of 2+ sizes trained for the same tokens"
        return Finding(6, "not measured", "Learning curves of one size only.", reason)
    target = cur.groupby("run")["loss"].min().max()
    rows = []
    for L in (target, target * SAMPLE_TARGET_SLACK):
        for run, curve in cur.groupby("run"):
            S, D = reach(curve, L)
            rows.append({"target": L, "size": size[run], "N": curve["N"].iloc[0], "S": S, "D": D})
    # Per size level, the fastest of its shapes.
    table = pd.DataFrame(rows).sort_values("D").groupby(["target", "size"], as_index=False).first()
    slopes, lines = [], []
    for L, t in table.groupby("target"):
        t = t.sort_values("N")
        slope, _, se, _ = ols(np.log(t["N"].to_numpy()), np.log(t["D"].to_numpy()))
        slopes.append((slope, se, len(t)))
        lines.append(
            f"to reach loss {L:.3f}, N = {t['N'].iloc[0]:.3g} needs {t['D'].iloc[0]:.3g} tokens "
            f"({t['S'].iloc[0]:.3g} steps), N = {t['N'].iloc[-1]:.3g} needs "
            f"{t['D'].iloc[-1]:.3g} ({t['S'].iloc[-1]:.3g} steps); d ln D/d ln N = "
            f"{slope:.2f} ± {se:.2f} over {len(t)} sizes"
        )
    evidence = "On runs of equal length, " + "; ".join(lines) + "."
    numbers = {"table": table, "slopes": [s for s, _, _ in slopes]}
    # Two sizes give no standard error, so they cannot show the fall is more than noise.
    met = all(n >= 3 and slope + 2 * se < 0 for slope, se, n in slopes)
    measured = ", ".join(f"{slope:.2f} ± {se:.2f} over {n} sizes" for slope, se, n in slopes)
    kept = {"measured": measured, "met": met, "selection": Selection.of(cur, ["N"], run="run")}
    if met:
        reason = "larger sizes reach each loss in fewer tokens and steps"
        return Finding(6, "reproduced", evidence, reason, numbers, **kept)
    if all(slope < 0 for slope, _, _ in slopes):
        reason = "tokens fall with N, but not by more than twice their standard error"
        return Finding(6, "partly", evidence, reason, numbers, **kept)
    reason = "larger sizes do not reach the targets in fewer tokens"
    return Finding(6, "not reproduced", evidence, reason, numbers, **kept)


def finding_stopping(lc: LawFit, lnd: LawFit, runs: pd.DataFrame) -> Finding:
    """(7) How far above converged loss the frontier's runs are, over the fitted L(C) range.

    Converged loss is L(N, D → ∞) = (N_c/N)^α_N from the L(N, D) fit; without it, the
    lowest loss any run of that size reached, which makes the gap a lower bound.
    """
    if lc.fit is None:
        return Finding(7, "not measured", "No compute-efficient frontier.", lc.skipped)
    if "early_loss" not in runs:
        return Finding(7, "not measured", "No final losses.", "results lack column 'loss'")
    frontier = lc.points
    final = runs.groupby("run_id")["early_loss"].min()
    if lnd.fit is not None and lnd.fit.ok:
        p = lnd.fit.params
        converged = (p["N_c"] / frontier["N"]) ** p["alpha_N"]
        method = "(N_c/N)^α_N from the L(N, D) fit"
    else:
        best = runs.groupby("N")["early_loss"].min()
        converged = frontier["N"].map(best)
        method = "lowest loss reached at that N (a lower bound on the gap)"
    gap = frontier["loss"].to_numpy() / converged.to_numpy() - 1
    numbers = {
        "median_gap": float(np.nanmedian(gap)),
        "converged_from": method,
        "kaplan_gap": KAPLAN_STOP_GAP,
    }
    evidence = (
        f"Along the fitted frontier ({len(frontier)} points, {frontier['run'].nunique()} runs) "
        f"loss is a median {numbers['median_gap']:.1%} above converged ({method}); Kaplan: "
        f"about {KAPLAN_STOP_GAP:.0%}."
    )
    own = frontier["loss"].to_numpy() / frontier["run"].map(final).to_numpy() - 1
    numbers["median_gap_to_own_final"] = float(np.nanmedian(own))
    evidence += f" Above the frontier run's own final loss: median {np.nanmedian(own):.1%}."
    measured = f"{numbers['median_gap']:.1%}"
    selection = Selection.of(frontier, ["N"], run="run")
    return _graded(
        7, numbers["median_gap"], STOP_GAP, True, measured, evidence, "", numbers, selection
    )


def reach(curve: pd.DataFrame, target: float) -> tuple[float, float]:
    """Steps and tokens at which a curve first reaches `target`, interpolated in log-log
    between evaluations (NaN if it never does)."""
    curve = curve.sort_values("S")
    loss = curve["loss"].to_numpy(float)
    below = np.flatnonzero(loss <= target)
    if below.size == 0:
        return float("nan"), float("nan")
    i = below[0]
    S, D = curve["S"].to_numpy(float), curve["D"].to_numpy(float)
    if i == 0:
        return S[0], D[0]
    w = np.log(loss[i - 1] / target) / np.log(loss[i - 1] / loss[i])
    return tuple(float(np.exp((1 - w) * np.log(v[i - 1]) + w * np.log(v[i]))) for v in (S, D))


def _grade(value: float, thresholds: tuple[float, float], *, higher_is_better: bool) -> str:
    """'reproduced', 'partly' or 'not reproduced' by two thresholds, best first."""
    good, fair = thresholds
    if higher_is_better:
        return "reproduced" if value >= good else "partly" if value >= fair else "not reproduced"
    return "reproduced" if value <= good else "partly" if value <= fair else "not reproduced"


def _graded(
    number: int,
    value: float,
    thresholds: tuple[float, float],
    higher_is_better: bool,
    measured: str,
    evidence: str,
    reason: str,
    numbers: dict,
    selection: Selection,
) -> Finding:
    """Finding `number` graded by `thresholds` on `value`, met when it grades "reproduced"."""
    verdict = _grade(value, thresholds, higher_is_better=higher_is_better)
    return Finding(
        number,
        verdict,
        evidence,
        reason,
        numbers,
        measured=measured,
        met=verdict == "reproduced",
        selection=selection,
    )


def _fit_verdict(
    number: int,
    law: LawFit,
    detail: str,
    flaw: str,
    evidence: str,
    numbers: dict,
    selection: Selection,
) -> Finding:
    """Finding `number` from how well its law fits: reproduced when it converged within
    SMOOTH_RMS and shows no `flaw`, not reproduced without an estimate, else partly."""
    measured = f"status {law.fit.status}, rms {law.rms():.2%}, {detail}"
    if not law.fit.usable:
        reason = f"the fit gives no estimate ({law.fit.status})"
        return Finding(
            number,
            "not reproduced",
            evidence,
            reason,
            numbers,
            measured=measured,
            selection=selection,
        )
    met = law.fit.ok and law.rms() <= SMOOTH_RMS and not flaw
    return Finding(
        number,
        "reproduced" if met else "partly",
        evidence,
        flaw,
        numbers,
        measured=measured,
        met=met,
        selection=selection,
    )
