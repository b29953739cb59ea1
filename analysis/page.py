"""The report: one page, assembled here from the studies' sections, and `fits.json`, written once.

The page opens with what the study found (each headline exponent with its interval beside
the published value and a verdict, the status of every fit, the study's cost and caveats);
the studies' sections, the runs and the pooled diagnostics follow.

`fits.json` (schema `SCHEMA`):

- `schema`: the version of this layout.
- `headline`: `{name: {value, ci, n_points, selection, status, parameter, measures,
  published, verdict}}`, one entry per question the study answers (`ci` is `[lo, hi]`, the
  95 % bootstrap interval, or null without a bootstrap; `selection` says which rows the fit
  used; `verdict` is consistent | differs | no interval | not determined | skipped).
- `study`: runs by status, total FLOPs and wall time, the ranges of N, D, C, tokens per
  parameter and epochs, and the caveats shown at the top of the page.
- each study's own keys (Kaplan: "L(N)", "L(D)", "L(C)", "L(N,D)", "N_opt(C)", "L(N,S)",
  "kaplan_findings", "icl"), each fit as `Fit.to_dict()` with the rows it was fitted on.
- `diagnostics`: every law of `analysis.registry` fitted on all rows at once, keyed like
  `power_N`; never an answer of the study's.

A study is a function returning an `analysis.section.Section`; adding one is one line in
`_sections`.
"""

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.kaplan import write_kaplan_report
from analysis.overview import write_overview
from analysis.report import write_fits
from analysis.result import jsonable
from analysis.section import Section

SCHEMA = 1
# The run tables' names (as `scaling-report` collects them) for the canonical ones.
COLUMNS = {"run": "run_id"}
CURVE_COLUMNS = {"run": "run_id", "S": "step", "D": "tokens", "C": "flops", "loss": "val_loss"}
STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1280px;margin:1.5em auto;padding:0 1.5em;
color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.wide{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num,th.num{text-align:right;white-space:nowrap}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}
figure{margin:0}figure img,img{max-width:100%;height:auto;display:block}
figure.wide-figure{grid-column:1/-1}
figcaption{font-size:13px;color:#555;margin-top:.3em}
.verdict-consistent{color:#1a7f37}.verdict-differs{color:#b35900}
.caveats li{margin:.2em 0}
"""


def write_page(
    results: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: str | Path,
    *,
    title: str,
    positions: pd.DataFrame | None = None,
    problems: list[str] | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> Path:
    """Write `out_dir/index.html`, its figures and `fits.json`; return the page's path.

    `results` has one row per run (run_id, status, N, D, C, loss, wall_s, epochs, the
    run's config as dotted columns), `curves` one row per evaluation (run_id, step, tokens,
    flops, val_loss), `positions` the loss per context position; `problems` lists run
    directories that could not be read. Raises ValueError on an empty results table.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = _sections(results, curves, out, positions, n_bootstrap, seed)
    study = _study(results, sections)
    fits: dict[str, Any] = {"schema": SCHEMA, "headline": {}, "study": study}
    for section in sections:
        fits["headline"] |= section.headline
        clash = set(fits) & set(section.fits)
        if clash:
            raise ValueError(f"sections share fits.json keys {sorted(clash)}")
        fits |= section.fits
    (out / "fits.json").write_text(json.dumps(jsonable(fits), indent=2, allow_nan=False))
    studies, diagnostics = sections[:-1], sections[-1]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _summary(study, fits["headline"], sections),
        *(s.html for s in studies),
        write_overview(results, curves, out),
        diagnostics.html,
    ]
    if problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        body.append(f"<section><h2>Skipped run directories</h2><ul>{items}</ul></section>")
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _sections(
    results: pd.DataFrame,
    curves: pd.DataFrame,
    out: Path,
    positions: pd.DataFrame | None,
    n_bootstrap: int,
    seed: int,
) -> list[Section]:
    """Every study's section, then the pooled diagnostics (always last)."""
    boot = {"n_bootstrap": n_bootstrap, "seed": seed}
    completed = results[results["status"] == "completed"] if "status" in results else results
    kaplan = write_kaplan_report(results, curves, out, positions=positions, **boot)
    done_curves = curves[curves["run_id"].isin(completed["run_id"])] if len(curves) else None
    diagnostics = write_fits(
        completed, out, curves=done_curves, columns=COLUMNS, curve_columns=CURVE_COLUMNS, **boot
    )
    return [kaplan, diagnostics]


def _study(results: pd.DataFrame, sections: list[Section]) -> dict[str, Any]:
    """Runs by status, cost, ranges and caveats, for the summary and fits.json."""
    done = results[results["status"] == "completed"] if "status" in results else results
    study: dict[str, Any] = {
        "runs": len(results),
        "by_status": results["status"].value_counts().to_dict() if "status" in results else {},
        "flops": float(results["C"].sum()) if "C" in results else None,
        "wall_s": float(results["wall_s"].sum()) if "wall_s" in results else None,
    }
    ranges = {}
    for name in ("N", "D", "C"):
        if name in done and len(done):
            lo, hi = float(done[name].min()), float(done[name].max())
            ranges[name] = {"min": lo, "max": hi, "decades": float(np.log10(hi / lo))}
    study["ranges"] = ranges
    caveats = []
    if {"N", "D"} <= set(done) and len(done):
        ratio = done["D"] / done["N"]
        study["tokens_per_param"] = [float(ratio.min()), float(ratio.max())]
        caveats.append(
            f"Tokens per parameter D/N span {ratio.min():.3g} to {ratio.max():.3g} "
            "(Chinchilla's compute-optimal ratio is about 20)."
        )
    if "epochs" in done and done["epochs"].notna().any():
        study["max_epochs"] = float(done["epochs"].max())
        repeated = int((done["epochs"] > 1).sum())
        caveats.append(
            f"Runs see up to {done['epochs'].max():.2g} epochs of their corpus"
            + (
                f"; {repeated} repeat data, which the laws assume they do not."
                if repeated
                else " (no run repeats data)."
            )
        )
    if ranges:
        caveats.append(
            "Ranges: "
            + "; ".join(
                f"{k} {r['min']:.3g} to {r['max']:.3g} ({r['decades']:.2g} decades)"
                for k, r in ranges.items()
            )
            + ". Kaplan's laws span 6 or more decades in N; a narrower range constrains an "
            "exponent less, which the intervals show."
        )
    study["caveats"] = caveats + [c for s in sections for c in s.caveats]
    return study


def _summary(study: dict[str, Any], headline: dict[str, dict], sections: list[Section]) -> str:
    """The top of the page: what was run, what it cost, what it found, and how far to trust it."""
    e = html.escape
    counts = ", ".join(f"{v} {e(str(k))}" for k, v in sorted(study["by_status"].items()))
    cost = [f"{study['runs']} runs ({counts})"]
    if study["flops"]:
        cost.append(f"{study['flops']:.3g} training FLOPs")
    if study["wall_s"]:
        cost.append(f"{study['wall_s'] / 3600:.2g} h of run wall time")
    rows = []
    for name, h in headline.items():
        ci = "—" if not h["ci"] or None in h["ci"] else "[{:.3g}, {:.3g}]".format(*h["ci"])
        verdict = h["verdict"]
        rows.append(
            f"<tr><td>{e(name)}</td><td>{e(h['measures'])}</td>"
            f"<td class='num'>{_num(h['value'])}</td><td class='num'>{ci}</td>"
            f"<td class='num'>{_num(h['published'])}</td>"
            f"<td class='verdict-{verdict.replace(' ', '-')}'>{e(verdict)}</td>"
            f"<td class='num'>{h['n_points']}</td><td>{e(h['selection'])}</td>"
            f"<td>{e(h['status'])}</td></tr>"
        )
    head = "".join(
        f"<th{' class=num' if c in NUMERIC else ''}>{c}</th>"
        for c in (
            "law",
            "measures",
            "ours",
            "95% interval",
            "published",
            "verdict",
            "points",
            "fitted on",
            "status",
        )
    )
    statuses = "".join(
        f"<tr><td>{e(name)}</td><td>{e(status)}</td></tr>"
        for section in sections
        for name, status in section.statuses
    )
    caveats = "".join(f"<li>{e(c)}</li>" for c in study["caveats"])
    return (
        '<section class="summary"><h2>Summary</h2>'
        f"<p>{e(' · '.join(cost))}.</p>"
        "<h3>Headline exponents</h3>"
        "<p>Each fitted on the rows named beside it; the verdict compares the published value "
        "with our 95% bootstrap interval.</p>"
        f'<div class="wide"><table class="headline"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        f'<h3>Caveats</h3><ul class="caveats">{caveats}</ul>'
        "<h3>Status of every fit</h3>"
        '<div class="wide"><table class="statuses"><thead><tr><th>fit</th><th>status</th>'
        f"</tr></thead><tbody>{statuses}</tbody></table></div></section>"
    )


NUMERIC = ("ours", "95% interval", "published", "points")


def _num(value: Any) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.3g}"
