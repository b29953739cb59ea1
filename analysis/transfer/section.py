"""The transfer part of the report: D_T = k·D_F^α·N^β with intervals beside Hernandez et
al.'s text → Python values, the four figures of their kind (D_T, the fraction of effective
data from fine-tuning, fine-tuned against from-scratch loss, forgetting), where fine-tuning
stops paying (ossification), and one row per fine-tuned run.

It reads the whole results table (`scaling-report`'s, every stage and corpus): the law's
columns through `transfer_table`, and for forgetting source_val_loss, parent_step and the
parents' best_val_loss, best_val_step and final_val_loss. The figures are drawn by
`analysis.plots`.
"""

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import plots
from analysis.registry import fit_law
from analysis.result import Fit, jsonable
from analysis.section import Section
from analysis.table import FitInputError
from analysis.transfer.fit import MAX_FRACTION, PUBLISHED, transfer_table
from analysis.uncertainty import LEVEL

TITLE = "Transfer: effective data from pre-training (Hernandez et al. 2021)"
HEADLINE = (
    ("k", "k of D_T = k·D_F^α·N^β (D_F in characters for Hernandez)"),
    ("alpha", "α of D_T = k·D_F^α·N^β: transfer against fine-tuning data"),
    ("beta", "β of D_T = k·D_F^α·N^β: transfer against model size"),
)
SELECTION = "fine-tuned runs with D_T > 0 and D_F/D_E <= {cut:g}; from-scratch L(N, D) on {n}"
CAPTIONS = {
    "transfer_effective_data.png": (
        "Effective data transferred D_T = D_E − D_F against fine-tuning data D_F, a colour "
        "per model size, with the fitted D_T = k·D_F^α·N^β and its bootstrap band; hollow: "
        "runs outside the low-data fit (Hernandez et al. 2021)."
    ),
    "transfer_fraction.png": (
        "Fraction of the effective data that comes from fine-tuning, D_F/D_E, against D_F; "
        "lines: what the fitted law implies; dotted: the low-data cut."
    ),
    "transfer_losses.png": (
        "Fine-tuned loss (dots) against D_F and the from-scratch law at the same N (dashed; "
        "crosses: the from-scratch runs). Ringed: ossified runs, worse than training from "
        "scratch on the same data."
    ),
    "transfer_forgetting.png": (
        "Forgetting: each fine-tuned model's loss on its parent's validation split after "
        "fine-tuning, against D_F; dashed: the parent's loss before."
    ),
}


def transfer_section(
    results: pd.DataFrame, out_dir: str | Path, *, n_bootstrap: int, seed: int
) -> Section | None:
    """The transfer section of the report, or None when `results` holds no fine-tuned run.

    `results`: the whole results table, one row per run of every stage and corpus (as
    `scaling-report` collects it): parents, fine-tunes and from-scratch runs are told apart
    here. Writes `transfer_*.png` into `out_dir`. The fit's intervals come from
    `n_bootstrap` resamples (seeded by `seed`). The section's fits are fits.json's
    `"transfer"` (k, alpha, beta, their intervals, the cut, every run's D_E, D_T, multiplier
    and fraction, ossification, forgetting); its headline holds k, alpha and beta against
    Hernandez et al.'s text → Python values. A table the law cannot use (missing columns,
    parents not in the table, too few from-scratch runs) gives a section saying so, not an
    exception.
    """
    table = transfer_table(results)
    if table is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        fit = fit_law(table, "transfer", n_bootstrap=n_bootstrap, seed=seed)
    except FitInputError as error:
        return _skipped(str(error))
    losses = forgetting_table(results, fit)
    figures = _figures(out, fit, losses)
    runs = fit.tables["runs"]
    scratch = fit.diagnostics["scratch"]
    return Section(
        title=TITLE,
        html=_html(fit, losses, figures),
        fits={"transfer": _fits(fit, losses)},
        headline=headline(fit),
        caveats=_caveats(fit, results),
        statuses=(
            ("transfer D_T = k·D_F^α·N^β", fit.status),
            ("transfer from-scratch L(N, D)", scratch["status"]),
            *(("transfer: skipped " + s["run"], s["reason"]) for s in _skipped_runs(runs)),
        ),
    )


def forgetting_table(results: pd.DataFrame, fit: Fit) -> pd.DataFrame:
    """Per fine-tuned run that recorded one, the loss on its parent's validation split
    before (the parent's, at the checkpoint the fine-tune started from: its best or final
    validation loss) and after fine-tuning (`source_val_loss`, at the fine-tune's last
    evaluation), and the change; columns run, parent, N, D_F, before, after, change."""
    runs = fit.tables["runs"].dropna(subset=["loss"])
    if "source_val_loss" not in results or runs.empty:
        return pd.DataFrame(columns=["run", "parent", "N", "D_F", "before", "after", "change"])
    by_id = results.set_index(results["run_id"].astype(str))
    after = pd.to_numeric(by_id["source_val_loss"], errors="coerce")
    table = runs[["run", "parent", "N", "D_F"]].assign(
        before=[
            _parent_loss(by_id, child, parent)
            for child, parent in zip(runs["run"], runs["parent"], strict=True)
        ],
        after=after.reindex(runs["run"]).to_numpy(),
    )
    table["change"] = table["after"] - table["before"]
    return table.dropna(subset=["after"]).reset_index(drop=True)


def _parent_loss(by_id: pd.DataFrame, child: str, parent: str) -> float:
    """The parent's validation loss at the step the child started from: its best when the
    child started from the best checkpoint (or the record does not say), else its final."""
    row = by_id.loc[parent]
    step = by_id.loc[child].get("parent_step")
    best = pd.to_numeric(row.get("best_val_loss"), errors="coerce")
    final = pd.to_numeric(row.get("final_val_loss"), errors="coerce")
    if pd.notna(step) and pd.notna(row.get("best_val_step")) and step != row["best_val_step"]:
        return float(final) if pd.notna(final) else float(best)
    return float(best) if pd.notna(best) else float(final)


def headline(fit: Fit) -> dict[str, dict[str, Any]]:
    """k, alpha and beta, each `{parameter, measures, value, ci, n_points, selection, status,
    published, verdict}`: `consistent` when the interval holds Hernandez et al.'s text →
    Python value, `differs` when not, `no interval` without a bootstrap, `not determined`
    when the fit gives no estimate."""
    cut = fit.diagnostics["cut"]["max_fraction"]
    selection = SELECTION.format(cut=cut, n=f"{fit.diagnostics['n_scratch']} runs")
    out = {}
    for name, what in HEADLINE:
        interval = fit.intervals.get(name)
        ci = list(interval) if interval else None
        out[f"transfer {name}"] = {
            "parameter": name,
            "measures": what,
            "value": fit.params[name],
            "ci": ci,
            "n_points": fit.n_points,
            "selection": selection,
            "status": fit.status,
            "published": PUBLISHED[name],
            "verdict": _verdict(fit.usable, ci, PUBLISHED[name]),
        }
    return jsonable(out)


def _verdict(usable: bool, ci: list[float] | None, published: float) -> str:
    if not usable:
        return "not determined"
    if ci is None or None in ci or not np.all(np.isfinite(ci)):
        return "no interval"
    return "consistent" if ci[0] <= published <= ci[1] else "differs"


def _fits(fit: Fit, losses: pd.DataFrame) -> dict[str, Any]:
    """fits.json's "transfer"."""
    runs = fit.tables["runs"]
    out: dict[str, Any] = {name: fit.params[name] for name in ("k", "alpha", "beta")}
    for name in ("k", "alpha", "beta"):
        out[f"{name}_ci"] = list(fit.intervals[name]) if name in fit.intervals else None
    d = fit.diagnostics
    out |= {
        "n_runs": fit.n_points,
        "n_finetuned": d["n_finetuned"],
        "n_scratch": d["n_scratch"],
        "cut": d["cut"],
        "excluded": d.get("excluded", {}),
        "skipped": d["skipped"],
        "status": fit.status,
        "published": PUBLISHED,
        "units": "D in tokens of the runs' tokenizer, N non-embedding parameters",
        "scratch": {k: d["scratch"][k] for k in ("params", "status", "n_points", "method")},
        "bootstrap": d.get("bootstrap"),
        "ossified": runs.loc[_flag(runs, "ossified"), "run"].tolist(),
        "stops_paying": stops_paying(runs),
        "runs": runs.to_dict(orient="records"),
        "forgetting": losses.to_dict(orient="records"),
    }
    return jsonable(out)


def stops_paying(runs: pd.DataFrame) -> dict[str, float | None]:
    """Per model size (`"N=…"`), the smallest D_F at which the fine-tuned model is ossified
    (worse than from scratch on the same data), or None when none of its runs is."""
    out: dict[str, float | None] = {}
    if "ossified" not in runs:
        return out
    for N, group in runs.dropna(subset=["loss"]).groupby("N"):
        worse = group.loc[_flag(group, "ossified"), "D_F"]
        out[f"N={N:.4g}"] = float(worse.min()) if len(worse) else None
    return out


def _flag(runs: pd.DataFrame, column: str) -> pd.Series:
    """A boolean column of the runs table, False where absent or unknown (skipped runs)."""
    if column not in runs:
        return pd.Series(False, index=runs.index)
    return runs[column].astype("boolean").fillna(False).astype(bool)


def _figures(out: Path, fit: Fit, losses: pd.DataFrame) -> list[str]:
    """Write the figures the fit allows; return their file names."""
    figures = {
        "transfer_effective_data.png": plots.plot_fit(fit, pd.DataFrame()),
        "transfer_fraction.png": plots.transfer_fraction(fit),
        "transfer_losses.png": plots.transfer_losses(fit),
    }
    if len(losses):
        figures["transfer_forgetting.png"] = plots.forgetting(losses)
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=100)
    return list(figures)


def _skipped_runs(runs: pd.DataFrame) -> list[dict[str, str]]:
    skipped = runs[runs["why_not"].astype(str).str.startswith("skipped")]
    return [{"run": r.run, "reason": r.why_not} for r in skipped.itertuples()]


def _html(fit: Fit, losses: pd.DataFrame, figures: list[str]) -> str:
    """The section: what was fitted and how, the constants against Hernandez's, the
    figures, where fine-tuning stops paying, forgetting, and every run."""
    e = html.escape
    d = fit.diagnostics
    runs = fit.tables["runs"]
    cut = d["cut"]["max_fraction"]
    excluded = "; ".join(f"{n} {e(why)}" for why, n in d.get("excluded", {}).items())
    boot = d.get("bootstrap")
    uncertainty = (
        f"{boot['level']:.0%} intervals from {boot['used']}/{boot['k']} bootstrap resamples "
        "of the from-scratch and fine-tuned runs (each kind resampled within itself, parents "
        "held; every resample refits the from-scratch law, every D_E and the D_T law)"
        if boot
        else "no intervals (the report was made without --bootstrap)"
    )
    p = d["scratch"]["params"]
    parts = [
        '<section class="transfer">',
        f"<h2>{e(TITLE)}</h2>",
        f"<p>{d['n_finetuned']} fine-tuned runs and {d['n_scratch']} from-scratch runs on the "
        "target. The from-scratch law L(N, D) = E + A/N^α + B/D^β is fitted on the "
        "from-scratch runs; each fine-tuned run's effective data D_E is the D at which it "
        "reaches the fine-tuned (early-stopped) loss at the same N, "
        "D_E = (B/(L − E − A/N^α))^(1/β), and D_T = D_E − D_F. A loss at or below the "
        "from-scratch floor E + A/N^α has no D_E and is flagged, not extrapolated. "
        f"D_T = k·D_F^α·N^β is fitted by least squares on ln D_T over the {fit.n_points} "
        f"runs in the low-data regime (D_T > 0 and D_F/D_E ≤ {cut:g}, the fraction of "
        f"effective data from fine-tuning){'; left out: ' + excluded if excluded else ''}. "
        f"{e(uncertainty)}.</p>",
        f"<p>From-scratch fit ({e(d['scratch']['method'])}, {d['scratch']['n_points']} runs, "
        f"{e(d['scratch']['status'])}): E = {_num(p['E'])}, A = {_num(p['A'])}, "
        f"α = {_num(p['alpha'])}, B = {_num(p['B'])}, β = {_num(p['beta'])}.</p>",
        _constants(fit),
        '<div class="figures">'
        + "".join(plots.figure_html(name, CAPTIONS[name]) for name in figures)
        + "</div>",
        "<h3>Where fine-tuning stops paying (ossification)</h3>",
        _ossification(runs),
    ]
    if len(losses):
        parts += [
            "<h3>Forgetting: the loss on the source, before and after</h3>",
            _forgetting(losses),
        ]
    shown = runs.drop(columns=["reach", "below_reach"], errors="ignore")
    parts += [
        "<h3>Every fine-tuned run</h3>",
        '<div class="wide">'
        + shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
        + "</div>",
        "</section>",
    ]
    return "\n".join(parts)


def _constants(fit: Fit) -> str:
    """k, α, β: ours with the interval, Hernandez's text → Python, the verdict."""
    rows = []
    level = fit.diagnostics.get("bootstrap", {}).get("level", LEVEL)
    for entry in headline(fit).values():
        ci = entry["ci"]
        rows.append(
            {
                "constant": entry["parameter"],
                "ours": _num(entry["value"]),
                f"{level:.0%} interval": "—" if not ci else f"[{_num(ci[0])}, {_num(ci[1])}]",
                "Hernandez, text → Python": _num(entry["published"]),
                "verdict": entry["verdict"],
            }
        )
    note = (
        "<p>Hernandez et al. count D_F in characters and fit far larger models, pre-trained "
        "on English text and fine-tuned on GitHub Python; compare the exponents first: k "
        "carries the units, the corpora and the scale.</p>"
    )
    return pd.DataFrame(rows).to_html(index=False, border=0) + note


def _ossification(runs: pd.DataFrame) -> str:
    """One line per model size: from which D_F its fine-tuned runs end worse than scratch."""
    e = html.escape
    paying = stops_paying(runs)
    if not paying:
        return "<p>Not measured: no from-scratch law to compare with.</p>"
    items = []
    for key, D_F in paying.items():
        if D_F is None:
            items.append(f"<li>{e(key)}: better than from scratch at every D_F measured.</li>")
        else:
            items.append(
                f"<li>{e(key)}: worse than from scratch from D_F = {D_F:.3g} tokens on.</li>"
            )
    measured = runs.dropna(subset=["scratch_run_loss"]) if "scratch_run_loss" in runs else []
    against = (
        f" {len(measured)} fine-tuned runs have a from-scratch run at the same (N, D); their "
        "losses are in the run table (scratch_run_loss)."
        if len(measured)
        else ""
    )
    return (
        "<p>A fine-tuned run is ossified when it ends worse than the from-scratch law at its "
        f"own (N, D_F) (D_T &lt; 0).{against}</p><ul>" + "".join(items) + "</ul>"
    )


def _forgetting(losses: pd.DataFrame) -> str:
    """Source loss before and after, per N and D_F."""
    shown = losses[["N", "D_F", "before", "after", "change"]].sort_values(["N", "D_F"])
    return (
        "<p>Before: the parent's validation loss at the checkpoint the fine-tune started "
        "from; after: the fine-tuned model's loss on the same split at its last evaluation "
        "(on the fine-tune's evaluation batches, so a small difference at D_F → 0 is "
        "sampling).</p>" + shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)
    )


def _caveats(fit: Fit, results: pd.DataFrame) -> tuple[str, ...]:
    """What to keep in mind reading the transfer numbers."""
    runs = fit.tables["runs"]
    caveats = [
        "Transfer: Hernandez et al.'s k, α, β hold for English → GitHub Python with D_F in "
        "characters and far larger models; here D counts the runs' tokens (bytes with the "
        "bytes tokenizer, close to characters for ASCII code) at small N: compare α and β "
        "first, and read k with its units."
    ]
    if "data.tokenizer" in results and (results["data.tokenizer"] == "bpe").any():
        caveats.append(
            "Transfer: some runs use BPE; a fine-tune inherits its parent's tokenizer while a "
            "from-scratch run trains its own, so their losses are per different tokens."
        )
    extrapolated = int(_flag(runs, "extrapolated").sum())
    if extrapolated:
        caveats.append(
            f"Transfer: {extrapolated} fine-tuned runs have D_E beyond every from-scratch "
            "run's D: their D_E reads the from-scratch law past its data."
        )
    return tuple(caveats)


def _skipped(why: str) -> Section:
    """The section when the law cannot be fitted: the reason, and skipped headline entries."""
    entries = {
        f"transfer {name}": {
            "parameter": name,
            "measures": what,
            "value": None,
            "ci": None,
            "n_points": 0,
            "selection": "",
            "status": f"skipped: {why}",
            "published": PUBLISHED[name],
            "verdict": "skipped",
        }
        for name, what in HEADLINE
    }
    return Section(
        title=TITLE,
        html=f'<section class="transfer"><h2>{html.escape(TITLE)}</h2>'
        f"<p>Not fitted: {html.escape(why)}.</p></section>",
        fits={"transfer": {"status": f"skipped: {why}", "cut": {"max_fraction": MAX_FRACTION}}},
        headline=entries,
        statuses=(("transfer D_T = k·D_F^α·N^β", f"skipped: {why}"),),
    )


def _num(value: Any) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3g}"
