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
- `study`: runs by status, total FLOPs spent and wall time (of every run), `cost` where WSD
  cooldown branches share trunks (`{spent, as_independent_runs, share, branches, trunks}`:
  `analysis.table.study_cost`), `fitted` (the stage,
  corpus and completed runs the fits use), `left_out` (`[{stage, corpus_cache, runs,
  report}]`: completed runs of other corpora or stages, and the command that reports on
  them, or null), the ranges of N, D, C, tokens per parameter and epochs of the fitted
  runs, `multi_epoch_runs`, and the caveats shown at the top of the page.
- `study.count`: the counting convention N and C were counted by for every fit
  (`analysis.counting`: kaplan | standard | total), or null: the table's own N
  (non-embedding parameters) and C (the FLOPs each run recorded).
- each study's own keys (Kaplan: "L(N)", "L(D)", "L(C)", "L(N,D)", "N_opt(C)", "L(N,S)",
  "kaplan_findings", "icl"; transfer: "transfer", `{k, alpha, beta, k_ci, alpha_ci,
  beta_ci, n_runs, cut, ...}`; overoptimization: "bon" and "rl", each keyed by RM size,
  `{alpha, beta, alpha_ci, beta_ci, n_points, ...}`, and "overoptimization", the trends
  with RM size; masked vs causal LM: "objectives", `{causal|masked@RATE: {L(N), L(D),
  L(N,D), N_opt, quantities, ...}}`, "like_for_like" and "mask_rates"), each fit with the
  rows it was fitted on. "N_opt(C)" holds
  `conventions`: `{kaplan|standard|total: {N, used_by, a, a_ci, method, status, routes}}`,
  a of N_opt ∝ C^a from the same runs with N and C = 6·N·D counted each way (`a_ci` the
  95 % bootstrap interval or null; `method` the route a came from; `routes` every route's
  `{a, a_ci, status}`; `used_by` the published numbers counted that way; standard and
  total also hold `relabelled`, `{from: "kaplan", elasticity, a}`: the kaplan a recounted
  with N' ∝ N^elasticity, what counting alone changes; a convention whose counts the table
  lacks has a null a and a `skipped: …` status naming the column).
- `diagnostics`: every law of `analysis.registry` fitted on all the fitted runs at once,
  keyed like `power_N`; never an answer of the study's.

Which runs are fitted: the Kaplan section and the diagnostics fit pretraining runs of one
corpus (`analysis.table.pretraining_scope`): runs of several corpora or tokenizers are never
pooled; by default the largest group is fitted and the others are named at the top of the
page with the command that reports on them (`scaling-report DIR --corpus CACHE`). Fine-tuned
and SFT runs are not in those fits; the transfer section (`analysis.transfer`), present when
the sweep holds fine-tunes, reads every run and handles its two corpora itself; so does the
masked-vs-causal section (`analysis.mlm`), present when the sweep holds stage=mlm runs. The
run table lists every run.

A study is a function returning an `analysis.section.Section`; adding one is one line: in
`_sections` for a study of one corpus's pretraining runs, in `write_page` for one that reads
every run (transfer).
"""

import html
import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.counting import recount, recount_curves
from analysis.kaplan import write_kaplan_report
from analysis.mlm.section import mlm_section
from analysis.overopt.section import overopt_section
from analysis.overview import write_overview
from analysis.report import write_fits
from analysis.result import jsonable
from analysis.section import Section
from analysis.table import PRETRAIN, Scope, pretraining_scope, study_cost
from analysis.transfer.section import transfer_section

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
    corpus: str | None = None,
    command: str = "scaling-report SWEEP_DIR",
    count: str | None = None,
    bon: pd.DataFrame | None = None,
) -> Path:
    """Write `out_dir/index.html`, its figures and `fits.json`; return the page's path.

    `results` has one row per run (run_id, status, N, D, C, loss, wall_s, epochs, stage,
    corpus_cache, the run's config as dotted columns), `curves` one row per evaluation
    (run_id, step, tokens, flops, val_loss), `positions` the loss per context position;
    `problems` lists run directories that could not be read. The fits use the pretraining
    runs of one corpus: `corpus` (a `corpus_cache` value), by default the one with the most
    completed runs; `command` is how the reader reports on the others (`--corpus CACHE` is
    appended). `count` counts N and C = 6·N·D of every fit by that convention
    (`analysis.counting`; None: the table's own N and C); the study's cost stays the FLOPs
    the runs recorded. Raises ValueError on an empty results table, FitInputError (naming
    the corpora there are) on a `corpus` no completed pretraining run has, and (naming the
    column) for a `count` the table lacks the parameter counts of. `bon`: the study's
    best-of-n tables per prompt (`analysis.overopt.read_bon`), which with its RL runs make
    the overoptimization section.
    """
    if len(results) == 0:
        raise ValueError("results table is empty: no runs to report on")
    scope = pretraining_scope(results, corpus)
    fitted_curves = _of_runs(curves, scope.runs)
    if count is not None:
        scope = replace(scope, runs=recount(scope.runs, count))
        fitted_curves = recount_curves(fitted_curves, scope.runs, count)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = _sections(
        scope.runs,
        fitted_curves,
        out,
        _of_runs(positions, scope.runs),
        n_bootstrap,
        seed,
        count,
    )
    # Transfer reads every run (parents on the source corpus, the rest on the target): first,
    # since a sweep holding fine-tunes is a transfer study before it is anything else
    overopt = overopt_section(results, curves, bon, out, n_bootstrap=n_bootstrap, seed=seed)
    sections = [overopt, *sections] if overopt is not None else sections
    mlm = mlm_section(results, out, n_bootstrap=n_bootstrap, seed=seed)
    sections = [mlm, *sections] if mlm is not None else sections
    transfer = transfer_section(results, out, n_bootstrap=n_bootstrap, seed=seed)
    sections = [transfer, *sections] if transfer is not None else sections
    study = _study(results, scope, sections, command) | {"count": count}
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
        write_overview(results, curves, out, fitted=scope.runs),
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


def _of_runs(table: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of a per-run table (curves, positions) that belong to `runs`."""
    if table is None or "run_id" not in table or "run_id" not in runs:
        return table
    return table[table["run_id"].isin(runs["run_id"])]


def _sections(
    results: pd.DataFrame,
    curves: pd.DataFrame,
    out: Path,
    positions: pd.DataFrame | None,
    n_bootstrap: int,
    seed: int,
    count: str | None = None,
) -> list[Section]:
    """Every study's section, then the pooled diagnostics (always last): on `results`, the
    pretraining runs of one corpus (N and C counted by `count`), their curves and positions."""
    boot = {"n_bootstrap": n_bootstrap, "seed": seed}
    completed = results[results["status"] == "completed"] if "status" in results else results
    kaplan = (
        write_kaplan_report(results, curves, out, positions=positions, count=count, **boot)
        if len(results)
        else Section(
            title="Kaplan et al. 2020: laws and findings",
            html="<section><h2>Kaplan et al. 2020: laws and findings</h2>"
            "<p>Not fitted: the sweep holds no pretraining run.</p></section>",
            fits={},
            statuses=(("Kaplan", "skipped: no pretraining run"),),
        )
    )
    done_curves = curves[curves["run_id"].isin(completed["run_id"])] if len(curves) else None
    diagnostics = write_fits(
        completed, out, curves=done_curves, columns=COLUMNS, curve_columns=CURVE_COLUMNS, **boot
    )
    return [kaplan, diagnostics]


def _study(
    results: pd.DataFrame, scope: Scope, sections: list[Section], command: str
) -> dict[str, Any]:
    """Runs by status and cost (of every run); what the fits use and leave out; ranges and
    caveats of the fitted runs; for the summary and fits.json."""
    runs = scope.runs
    done = runs[runs["status"] == "completed"] if "status" in runs else runs
    cost = study_cost(results)
    study: dict[str, Any] = {
        "runs": len(results),
        "by_status": results["status"].value_counts().to_dict() if "status" in results else {},
        "flops": cost.spent if "C" in results else None,
        "wall_s": float(results["wall_s"].sum()) if "wall_s" in results else None,
        "fitted": {"stage": PRETRAIN, "corpus_cache": scope.corpus, "runs": len(done)},
        "left_out": [
            {
                "stage": PRETRAIN,
                "corpus_cache": name,
                "runs": n,
                "report": f"{command} --corpus {shlex.quote(name)}",
            }
            for name, n in scope.left_out.items()
        ]
        + [
            {"stage": stage, "corpus_cache": None, "runs": n, "report": None}
            for stage, n in scope.stages.items()
        ],
    }
    if cost.branches:  # WSD cooldown branches share their trunks' FLOPs
        study["cost"] = {"spent": cost.spent, "as_independent_runs": cost.independent,
                         "share": cost.share, "branches": cost.branches, "trunks": cost.trunks}
    ranges = {}
    for name in ("N", "D", "C"):
        if name in done and len(done):
            lo, hi = float(done[name].min()), float(done[name].max())
            ranges[name] = {"min": lo, "max": hi, "decades": float(np.log10(hi / lo))}
    study["ranges"] = ranges
    caveats = _scope_caveats(scope, len(done), command)
    if "epochs" in done and done["epochs"].notna().any():
        epochs = pd.to_numeric(done["epochs"], errors="coerce")
        repeated = int((epochs > 1).sum())
        study["max_epochs"] = float(epochs.max())
        study["multi_epoch_runs"] = repeated
        caveats.append(
            f"{repeated} of the {len(done)} runs the fits use train on more than one epoch "
            f'of their corpus (up to {epochs.max():.3g}), marked "repeats data" in the run table: '
            "they see tokens again, which the laws assume they do not; a larger corpus or "
            "fewer train.tokens avoids it."
            if repeated
            else f"Runs see up to {epochs.max():.2g} epochs of their corpus (no run repeats data)."
        )
    if {"N", "D"} <= set(done) and len(done):
        ratio = done["D"] / done["N"]
        study["tokens_per_param"] = [float(ratio.min()), float(ratio.max())]
        caveats.append(
            f"Tokens per parameter D/N span {ratio.min():.3g} to {ratio.max():.3g} "
            "(Chinchilla's compute-optimal ratio is about 20)."
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


def _scope_caveats(scope: Scope, n_fitted: int, command: str) -> list[str]:
    """What the fits leave out: other corpora (and how to report on them), other stages."""
    caveats = []
    if scope.left_out:
        how = "chosen with --corpus" if scope.chosen else "the largest group"
        others = "; ".join(
            f"{name} ({n} runs: {command} --corpus {shlex.quote(name)})"
            for name, n in scope.left_out.items()
        )
        caveats.append(
            f"The completed pretraining runs span {len(scope.corpora)} corpora (corpus_cache), "
            "which are never pooled: the fits use the "
            f"{n_fitted} on {scope.corpus} ({how}); left out: {others}."
        )
    if scope.stages:
        stages = ", ".join(f"{n} {stage}" for stage, n in scope.stages.items())
        tuned = "".join(f" (the {section} section fits the {stage} runs)"
                        for stage, section in (("finetune", "transfer"), ("mlm", "masked-LM"))
                        if stage in scope.stages)
        caveats.append(
            f"Completed runs of other stages ({stages}) are not in the pretraining laws "
            f"(Kaplan's and the diagnostics){tuned}; the run table lists them."
        )
    return caveats


def _summary(study: dict[str, Any], headline: dict[str, dict], sections: list[Section]) -> str:
    """The top of the page: what was run, what it cost, what it found, and how far to trust it."""
    e = html.escape
    counts = ", ".join(f"{v} {e(str(k))}" for k, v in sorted(study["by_status"].items()))
    cost = [f"{study['runs']} runs ({counts})"]
    if study["flops"]:
        cost.append(f"{study['flops']:.3g} training FLOPs")
    if study.get("cost"):
        c = study["cost"]
        cost.append(f"{c['branches']} runs are WSD cooldown branches of {c['trunks']} trunks: "
                    f"trained independently, the same runs would cost "
                    f"{c['as_independent_runs']:.3g} FLOPs, and this study spent {c['share']:.0%} "
                    "of that")
    if study["wall_s"]:
        cost.append(f"{study['wall_s'] / 3600:.2g} h of run wall time")
    if study.get("count"):
        cost.append(f"every fit's N and C = 6·N·D counted by the {study['count']} convention")
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
