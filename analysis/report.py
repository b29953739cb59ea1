"""Diagnostics: every law the tables support, fitted on all the rows at once.

Pooled over whatever varies in a study (batch size, shape, D), these fits answer no
question of the study's; they show how each law behaves on the whole table. The page
(`analysis.page`) places them under "Diagnostics", after the study's own fits.
"""

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.allocation import compute_optimal
from analysis.plots import SIZE, figure_html, plot_fit
from analysis.registry import LAWS, fit_law, required_columns
from analysis.result import Fit
from analysis.section import Section
from analysis.table import FitInputError, select


def plan_fits(
    table: pd.DataFrame, curves: pd.DataFrame | None = None
) -> list[tuple[str, str, pd.DataFrame, dict[str, Any]]]:
    """(key, law, frame, options) for every fit of the registry the tables' columns support:
    each law on its `source` table, once per option set in its `variants`, on the rows its
    `rows` picks (IsoFLOP: runs grouped by nominal budget, when 2 budgets have 3 runs)."""
    plans = []
    sources = {"runs": table, "curves": curves}
    for name, law in LAWS.items():
        frame = sources[law.source]
        if frame is not None and law.rows is not None:
            frame = law.rows(frame)
        if frame is None:
            continue
        for options in law.variants:
            if set(required_columns(name, bootstrap=True, **options)) <= set(frame):
                key = f"{name}_{options['x']}" if "x" in options else name
                plans.append((key, name, frame, dict(options)))
    return plans


def write_fits(
    table: pd.DataFrame,
    out_dir: str | Path,
    *,
    curves: pd.DataFrame | None = None,
    columns: Mapping[str, str] | None = None,
    curve_columns: Mapping[str, str] | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> Section:
    """Run the applicable fits, write `fit_<key>.png` to `out_dir`; return the section, whose
    fits (fits.json's "diagnostics") are keyed like `power_N`, `chinchilla`.

    `columns` and `curve_columns` map canonical names (N, D, C, S, loss, run, budget) to
    each table's own; curves without N take it from the table by run. Rows without a loss
    (failed runs, steps without an evaluation) are left out, and the count is shown; pass
    only the runs that should be fitted. Fits the data cannot support are recorded as
    skipped with the reason, not raised, so one bad column never costs the rest of the
    report. The HTML opens with one row per fit (status, points, each parameter with its
    interval), so a fit the data did not determine says so beside its numbers. Image paths
    in the HTML are relative to `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, left_out = _canonical(table, columns), 0
    if curves is not None:
        curves = _canonical(curves, curve_columns or columns)
        if "N" not in curves and {"run", "N"} <= set(table) and "run" in curves:
            curves = curves.merge(table[["run", "N"]].drop_duplicates("run"), on="run")
        curves, left_out = _with_loss(curves)
    table, skipped = _with_loss(table)
    left_out += skipped
    results: dict[str, Any] = {}
    parts, rows = [], []
    for key, law, frame, options in plan_fits(table, curves):
        title = LAWS[law].title + (f" in {options['x']}" if "x" in options else "")
        parts.append(f"<h3>{html.escape(title)}</h3>")
        try:
            data = select(frame, required_columns(law, bootstrap=n_bootstrap > 0, **options))
            fit = fit_law(data, law, n_bootstrap=n_bootstrap, seed=seed, **options)
        except FitInputError as error:
            results[key] = {"law": law, "status": f"skipped: {error}"}
            rows.append({"fit": title, "status": results[key]["status"]})
            parts.append(f"<p>Skipped: {html.escape(str(error))}</p>")
            continue
        rows.append(
            {"fit": title, "status": fit.status, "points": fit.n_points, "parameters": _shown(fit)}
        )
        results[key] = fit.to_dict()
        if LAWS[law].optimum:
            results[key]["allocation"] = compute_optimal(fit).to_dict()
        image, figure = f"fit_{key}.png", plot_fit(fit, data)
        figure.savefig(out / image, dpi=100)
        caption = f"{title}, fitted on all {fit.n_points} rows at once (pooled: a diagnostic)."
        wide = figure.get_figwidth() > SIZE["single"][0]
        parts += [_section(fit), figure_html(image, caption, wide=wide)]
    head = [
        '<section class="scaling-fits">',
        "<h2>Diagnostics: every law on all rows, pooled</h2>",
        "<p>Each law fitted on every completed run (or evaluation) of the study at once, "
        "whatever else varies between them (never runs of other corpora or stages). These are "
        "not the study's answers, which the summary gives with the rows each was fitted on.</p>",
    ]
    if left_out:
        head.append(f"<p>{left_out} rows without a loss left out.</p>")
    if rows:
        overview = pd.DataFrame(rows).convert_dtypes()  # points stay integers beside skips
        head.append(overview.to_html(index=False, na_rep="", border=0))
    return Section(
        title="Diagnostics",
        html="\n".join([*head, *parts, "</section>"]),
        fits={"diagnostics": results},
        statuses=tuple((f"pooled {key}", fit["status"]) for key, fit in results.items()),
    )


def _canonical(df: pd.DataFrame, columns: Mapping[str, str] | None) -> pd.DataFrame:
    """`df` with its columns renamed to the canonical names `columns` maps them from."""
    return df.rename(columns={v: k for k, v in (columns or {}).items()})


def _with_loss(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows that have a loss, and how many did not."""
    if "loss" not in df:
        return df, 0
    kept = df[df["loss"].notna()]
    return kept, len(df) - len(kept)


def _shown(fit: Fit) -> str:
    """Each parameter as 'name = value [lo, hi]' (the interval when there is one)."""
    return ", ".join(
        f"{name} = {value:.4g}"
        + (" [{:.4g}, {:.4g}]".format(*fit.intervals[name]) if name in fit.intervals else "")
        for name, value in fit.params.items()
    )


def _section(fit: Fit) -> str:
    """The fit's status line and parameter table."""
    boot = fit.diagnostics.get("bootstrap")
    uncertainty = (
        f"bootstrap over {boot['unit']}, {boot['used']}/{boot['k']} resamples used "
        f"({boot['degenerate']} degenerate, {boot['failed']} failed), "
        f"{boot['level']:.0%} percentile intervals"
        if boot
        else f"standard errors: {fit.diagnostics.get('stderr_method', 'none')}"
    )
    line = f"status: {fit.status} · {fit.n_points} points · {uncertainty}"
    table = fit.summary().to_html(float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
    return f"<p>{html.escape(line)}</p>\n{table}"
