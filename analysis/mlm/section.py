"""The report's section comparing how causal and masked LM scale (issue 19): the exponents of
each objective side by side with intervals, the like-for-like loss on common positions, and
the mask-rate curves (Wettig et al. 2023).

Reads the whole results table (`scaling-report`'s, every stage): causal runs are stage
`pretrain`, masked runs stage `mlm` (`analysis.mlm.fit`). fits.json gets "objectives" (per
objective: each law's parameters, intervals, status and n_points, the N_opt exponent and the
side-by-side quantities), "like_for_like" and "mask_rates".
"""

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import plots
from analysis.mlm.figures import laws_figure, like_for_like_figure, mask_rate_figure
from analysis.mlm.fit import (
    CAUSAL,
    LIKE_FOR_LIKE,
    QUANTITIES,
    ObjectiveFits,
    Study,
    best_rates,
    exponent_table,
    fit_objective,
    like_for_like,
    mask_rate_rows,
    rate_trend,
    study_runs,
)
from analysis.result import jsonable
from analysis.section import Section
from analysis.table import FitInputError

TITLE = "Masked LM beside causal LM: how each scales (issue 19)"
MEANING = {  # what each quantity of the side-by-side table is
    "alpha_N": "α of L(N) = (N_c/N)^α at the largest D",
    "alpha_D": "α of L(D) = (D_c/D)^α at the largest N",
    "alpha": "α of L(N, D) = E + A/N^α + B/D^β",
    "beta": "β of L(N, D)",
    "E": "E of L(N, D), the irreducible loss (own objective's units)",
    "a": "a of N_opt ∝ C^a, a = β/(α+β)",
}
CAPTIONS = {
    "mlm_laws.png": (
        "Each objective's own validation loss against N at the largest D (left) and against D "
        "at the largest N (right), with the fitted power law and its 95% bootstrap band. The "
        "objectives' losses are different quantities: compare the slopes, not the heights."
    ),
    "mlm_like_for_like.png": (
        "masked_positions_loss: every run scored on the same held-out tokens (the positions "
        "BERT's fixed validation corruption chooses, minus each window's first), causal runs "
        "from the left context, masked runs from both sides of the corrupted window."
    ),
    "mlm_mask_rates.png": (
        "Masked runs of one size at several mask rates and one budget: the validation loss at "
        "each run's own rate (a different task per rate) and, where recorded, the loss on the "
        "positions common to every run (a colour per size)."
    ),
}


def mlm_section(results: pd.DataFrame, out_dir: str | Path, *, n_bootstrap: int,
                seed: int) -> Section | None:
    """The section, or None when `results` holds no completed stage=mlm run.

    `results`: the whole results table, one row per run of every stage. Fits, per objective
    on the shared grid (causal, and the masked rate with the most runs), L(N), L(D), L(N, D)
    and the N_opt exponent with `n_bootstrap` seeded resamples; writes `mlm_laws.png`,
    `mlm_like_for_like.png` and `mlm_mask_rates.png` (those the table allows) into
    `out_dir`. A law the runs cannot support is reported as skipped, not raised.
    """
    try:
        study = study_runs(results)
    except FitInputError as error:
        return _skipped(str(error))
    if study is None:
        return None
    if study.grid is None:
        return _skipped("no completed stage=mlm run has a finite loss")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = study.runs
    fits = {
        objective: fit_objective(runs[runs["objective"] == objective], objective,
                                 n_bootstrap=n_bootstrap, seed=seed)
        for objective in (CAUSAL, study.grid)
    }
    pairs = like_for_like(runs)
    rates = mask_rate_rows(runs)
    best, judge = best_rates(rates)
    figures = {}
    if any(law.points is not None for fitted in fits.values() for law in fitted.laws.values()):
        figures["mlm_laws.png"] = laws_figure(fits)
    if pairs is not None:
        figures["mlm_like_for_like.png"] = like_for_like_figure(pairs)
    if len(rates):
        figures["mlm_mask_rates.png"] = mask_rate_figure(rates)
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=100)
    return Section(
        title=TITLE,
        html=_html(study, fits, pairs, rates, best, judge, list(figures), n_bootstrap),
        fits={
            "objectives": {name: fitted.to_dict() for name, fitted in fits.items()},
            "like_for_like": _like_for_like_fits(pairs),
            "mask_rates": jsonable({"rows": rates.to_dict(orient="records"),
                                    "best": best.to_dict(orient="records"),
                                    "judged_by": judge, "trend": rate_trend(best)}),
        },
        caveats=_caveats(pairs, judge, len(rates) > 0),
        statuses=tuple((f"MLM {objective} {key}",
                        law.fit.status if law.fit else f"skipped: {law.skipped}")
                       for objective, fitted in fits.items()
                       for key, law in fitted.laws.items())
        + tuple((f"MLM {objective} N_opt", fitted.quantity("a")["status"])
                for objective, fitted in fits.items()),
    )


def _like_for_like_fits(pairs: pd.DataFrame | None) -> dict[str, Any]:
    """fits.json's "like_for_like": the rows, or why there are none."""
    if pairs is None:
        return {"status": f"absent: no run recorded {LIKE_FOR_LIKE}", "rows": []}
    return jsonable({"status": "ok", "column": LIKE_FOR_LIKE,
                     "rows": pairs.to_dict(orient="records")})


def _html(study: Study, fits: dict[str, ObjectiveFits], pairs: pd.DataFrame | None,
          rates: pd.DataFrame, best: pd.DataFrame, judge: str, figures: list[str],
          n_bootstrap: int) -> str:
    """The section: what is compared and why, the side-by-side exponents, the figures, the
    like-for-like table and the mask-rate sentence."""
    e = html.escape
    counts = ", ".join(f"{len(f.runs)} {e(name)}" for name, f in fits.items())
    where = f" on {e(study.corpus)}" if study.corpus else ""
    others = (f" ({study.left_out} completed runs of other corpora are left out)"
              if study.left_out else "")
    uncertainty = (f"95% intervals from {n_bootstrap} bootstrap resamples of the runs"
                   if n_bootstrap > 0 else "no intervals (the report was made without "
                   "--bootstrap)")
    parts = [
        '<section class="mlm">',
        f"<h2>{e(TITLE)}</h2>",
        f"<p>Completed runs{where}: {counts}{others}. Per objective: L(N) at the largest D "
        "and L(D) at the largest N (the power law, Kaplan's pure form (x_c/x)^α with fewer "
        "than 5 points), L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, Approach 3) on "
        "all its runs, and from it the exponent a of the compute-optimal N_opt ∝ C^a, "
        f"a = β/(α+β); {e(uncertainty)}. N counts non-embedding parameters (equal for both "
        "objectives at one shape), D the tokens read (a masked run predicts only its "
        "chosen positions but reads every token, docs/mlm.md).</p>",
        "<p>The two validation losses are different quantities: a causal model's is the "
        "next-token cross-entropy from the left context, a masked model's the cross-entropy "
        "of the hidden tokens from both sides of a corrupted window. Their values (and E, "
        "in each loss's own units) do not compare; the exponents, dimensionless, do.</p>",
        _side_by_side(fits),
        '<div class="figures">'
        + "".join(plots.figure_html(name, CAPTIONS[name], wide=True) for name in figures)
        + "</div>",
        "<h3>Like for like: the loss on common positions</h3>",
        _like_for_like_html(pairs),
        "<h3>Mask rate (Wettig et al. 2023)</h3>",
        _mask_rate_html(rates, best, judge),
        "</section>",
    ]
    return "\n".join(parts)


def _side_by_side(fits: dict[str, ObjectiveFits]) -> str:
    """Rows: the quantities; columns: per objective, "value [lo, hi]" and the fit's status."""
    table = exponent_table(fits)
    rows = []
    for name, _, _ in QUANTITIES:
        row: dict[str, Any] = {"quantity": name, "measures": MEANING[name]}
        for objective in fits:
            q = table[(table["quantity"] == name) & (table["objective"] == objective)].iloc[0]
            interval = "" if np.isnan(q["lo"]) else f" [{_num(q['lo'])}, {_num(q['hi'])}]"
            row[objective] = _num(q["value"]) + interval
            row[f"{objective} status"] = q["status"]
        rows.append(row)
    return '<div class="wide">' + pd.DataFrame(rows).to_html(index=False, border=0) + "</div>"


def _like_for_like_html(pairs: pd.DataFrame | None) -> str:
    if pairs is None:
        return (f"<p>Not shown: no run in the table recorded {LIKE_FOR_LIKE} (runs recorded "
                "before train.eval_mask_rate scored the common positions).</p>")
    shown = pairs.pivot_table(index=["along", "N", "D"], columns="objective",
                              values=LIKE_FOR_LIKE).rename(index=_scale)
    return (
        "<p>Every run scores the same held-out tokens: the positions BERT's fixed validation "
        "corruption chooses, minus each window's first (which has no left context). A causal "
        "run predicts each from the tokens before it, a masked run from both sides of the "
        "corrupted window: the same targets, different context, so this one number compares "
        "across objectives.</p>"
        '<div class="wide">' + shown.to_html(float_format=lambda v: f"{v:.4g}", na_rep="—",
                                             border=0) + "</div>"
    )


def _mask_rate_html(rates: pd.DataFrame, best: pd.DataFrame, judge: str) -> str:
    """The best rate per size in a sentence, whether it rises with size, and the rows."""
    if rates.empty:
        return "<p>Not measured: no size was trained at two or more mask rates at one budget.</p>"
    by = ("masked_positions_loss (the positions common to every rate)" if judge == LIKE_FOR_LIKE
          else "val_loss at each run's own rate (a different task per rate: a higher rate "
          "hides more context, so this favours the low rates; masked_positions_loss would "
          "judge them alike)")
    best_each = "; ".join(f"N = {r.N:.3g}: {r.best_rate:g}" for r in best.itertuples())
    trend = {
        "rises": "rises with size, as Wettig et al. 2023 found (40 % beat 15 % for "
                 "BERT-large)",
        "falls": "falls with size, against Wettig et al. 2023 (who found it rises)",
        "stays": "is the same at every size",
        "mixed": "does not move one way with size",
        "one size": "cannot be compared across sizes (one size only)",
    }[rate_trend(best)]
    shown = rates.drop(columns=[LIKE_FOR_LIKE]) if rates[LIKE_FOR_LIKE].isna().all() else rates
    return (
        f"<p>Best rate by {html.escape(by)}: {best_each}. The best rate {trend}.</p>"
        '<div class="wide">' + shown.to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                             na_rep="—", border=0) + "</div>"
    )


def _caveats(pairs: pd.DataFrame | None, judge: str, has_rates: bool) -> tuple[str, ...]:
    caveats = ["Masked vs causal: the objectives' validation losses are different quantities "
               "(hidden tokens from both sides vs the next token from the left); only their "
               "exponents compare."]
    if pairs is None:
        caveats.append(f"Masked vs causal: no {LIKE_FOR_LIKE} in the table, so no loss is "
                       "compared like for like.")
    if has_rates and judge != LIKE_FOR_LIKE:
        caveats.append("Masked vs causal: the best mask rate is judged by each run's own "
                       "val_loss, which favours the rates that hide less.")
    return tuple(caveats)


def _skipped(why: str) -> Section:
    """The section when the comparison cannot be made: the reason."""
    return Section(
        title=TITLE,
        html=f'<section class="mlm"><h2>{html.escape(TITLE)}</h2>'
        f"<p>Not fitted: {html.escape(why)}.</p></section>",
        fits={"objectives": {}, "like_for_like": {"status": f"skipped: {why}", "rows": []},
              "mask_rates": {"status": f"skipped: {why}", "rows": []}},
        statuses=(("MLM objectives", f"skipped: {why}"),),
    )


def _num(value: Any) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3g}"


def _scale(value: Any) -> Any:
    """An N or D index label in 3 significant figures; other labels as they are."""
    return f"{value:.3g}" if isinstance(value, float) else value
