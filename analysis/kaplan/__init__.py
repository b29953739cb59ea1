"""Kaplan et al. 2020 on a sweep's tables: L(N), L(D), L(C), L(N, D), L(N, S), the
compute-optimal exponent, and a verdict on each of the paper's eight qualitative findings.

`write_kaplan_report` returns an HTML section and a dict for `fits.json`. Conventions are
Kaplan's: N counts non-embedding parameters, C is the run's training FLOPs, losses are in
nats/token. Every law or finding the tables cannot support is recorded as skipped or "not
measured" with the reason, never raised; only an empty results table is an error.

The package: `constants` (Kaplan's numbers; the verdict thresholds are imported from
there), `tables` (which rows each fit reads), `fits` (the laws), `icl` (loss per context
position), `findings` and `batch` (the verdicts), `verdict` (the `Finding` type, its one
criterion line and the minimum-evidence gate on the rows each finding used), `section`
(figures and HTML); this module ties them together.
"""

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.kaplan.batch import finding_batch, noise_scale_points, noise_scale_trend
from analysis.kaplan.constants import (
    CHINCHILLA_A,
    FINDINGS,
    KAPLAN,
    KAPLAN_A,
    KAPLAN_A_EQ15,
    KAPLAN_STOP_GAP,
    MIN_EVIDENCE,
    VERDICTS,
)
from analysis.kaplan.findings import (
    finding_learning_curves,
    finding_overfitting,
    finding_sample_efficiency,
    finding_shape,
    finding_smooth,
    finding_stopping,
    finding_transfer,
    reach,
    shape_groups,
)
from analysis.kaplan.fits import (
    LawFit,
    after_warmup,
    compute_optimal_exponent,
    exponent_by_convention,
    guarded,
    law_c,
    law_d,
    law_isoflop,
    law_n,
    law_nd,
    law_ns,
)
from analysis.kaplan.icl import per_position_icl
from analysis.kaplan.section import FIGURES_OF, _figures, _html, headline
from analysis.kaplan.tables import (
    completed_runs,
    curve_table,
    levels,
    main_series,
    transfer_curves,
)
from analysis.kaplan.verdict import Finding, Selection, explain, gate, study_evidence
from analysis.result import jsonable
from analysis.section import Section
from analysis.table import FitInputError

__all__ = [
    "CHINCHILLA_A",
    "FINDINGS",
    "KAPLAN",
    "KAPLAN_A",
    "KAPLAN_A_EQ15",
    "KAPLAN_STOP_GAP",
    "VERDICTS",
    "Finding",
    "LawFit",
    "Selection",
    "after_warmup",
    "completed_runs",
    "compute_optimal_exponent",
    "curve_table",
    "explain",
    "exponent_by_convention",
    "finding_batch",
    "finding_learning_curves",
    "finding_overfitting",
    "finding_sample_efficiency",
    "finding_shape",
    "finding_smooth",
    "finding_stopping",
    "finding_transfer",
    "law_c",
    "law_d",
    "law_n",
    "law_nd",
    "law_ns",
    "levels",
    "main_series",
    "noise_scale_points",
    "noise_scale_trend",
    "per_position_icl",
    "reach",
    "shape_groups",
    "transfer_curves",
    "write_kaplan_report",
]


def write_kaplan_report(
    results: pd.DataFrame,
    curves: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    positions: pd.DataFrame | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    count: str | None = None,
) -> Section:
    """Fit Kaplan's laws, judge the eight findings, write `kaplan_*.png` into `out_dir`.

    `results` has one row per run (run_id, status, N, n_params, D, C, loss, best_val_loss,
    model.n_layer, ...), `curves` one row per evaluation (run_id, step, tokens, flops,
    val_loss, lr), `positions` the validation loss per context position (run_id, position,
    loss). Only completed runs count, and Kaplan's laws and findings only those that saw their
    data at most once (Kaplan's runs never repeat data; `single_pass`): runs of more epochs
    (an IsoFLOP budget's smallest sizes, on a small corpus) enter only the IsoFLOP profiles,
    and a caveat says how many were left out. Returns the HTML section (image paths relative to
    `out_dir`), fits.json's keys "L(N)", "L(D)", "L(C)", "L(N,D)", "N_opt(C)", "L(N,S)",
    "kaplan_findings" and, with `positions`, "icl", the headline exponents against Kaplan's,
    the study's caveats and the status of every fit, as a `Section`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, repeated = single_pass(completed_runs(results))
    main = main_series(runs)
    boot = {"n_bootstrap": n_bootstrap, "seed": seed}
    try:
        cur, every_curve, no_curves = curve_table(curves, main), curve_table(curves, runs), ""
    except FitInputError as error:
        cur, every_curve, no_curves = None, None, str(error)

    ln = guarded("L(N)", "power", lambda: law_n(main, **boot))
    ld = guarded("L(D)", "power", lambda: law_d(main, **boot))
    lc = guarded("L(C)", "envelope", lambda: law_c(_need(cur, no_curves), **boot))
    lnd = guarded("L(N,D)", "kaplan-nd", lambda: law_nd(main, **boot))
    lns = guarded("L(N,S)", "kaplan-ns", lambda: law_ns(_need(cur, no_curves), **boot))
    budgets = main_series(pd.concat([runs, repeated]))  # IsoFLOP profiles keep every size
    iso = guarded("IsoFLOP", "isoflop", lambda: law_isoflop(budgets, **boot))
    n_opt = compute_optimal_exponent(lnd, lc, iso, **boot)
    n_opt["conventions"] = exponent_by_convention(main, curves, **boot, isoflop_runs=budgets)
    icl = per_position_icl(positions, runs) if positions is not None else None
    transfer = finding_transfer(runs)

    batch = finding_batch(every_curve, no_curves)
    figures = _figures(out, runs, cur, ln, ld, lc, icl, transfer, curves, every_curve, batch)
    findings = [
        finding_shape(runs, ln, ld, lc),
        finding_smooth(ln, ld, lc),
        finding_overfitting(lnd, main),
        finding_learning_curves(lns),
        transfer,
        finding_sample_efficiency(cur, ln, no_curves),
        finding_stopping(lc, lnd, main),
        batch,
    ]
    evidence = study_evidence(runs)
    findings = [
        replace(
            gate(f, runs),
            figures=tuple(name for name in FIGURES_OF[f.number] if name in figures),
        )
        for f in findings
    ]
    out_dict: dict[str, Any] = {law.key: law.to_dict() for law in (ln, ld, lc)}
    out_dict["L(N,D)"] = lnd.to_dict() | {
        name: lnd.fit.params[name] if lnd.fit else None
        for name in ("alpha_N", "alpha_D", "N_c", "D_c")
    }
    out_dict["N_opt(C)"] = n_opt
    out_dict["L(N,S)"] = lns.to_dict()
    out_dict["kaplan_findings"] = [f.to_dict() for f in findings]
    out_dict["kaplan_evidence"] = jsonable(evidence | {"minimum": MIN_EVIDENCE})
    if icl is not None:
        out_dict["icl"] = jsonable({k: v for k, v in icl.items() if k not in ("table", "scores")})
    laws = (ln, ld, lc, lnd, lns)
    statuses = (
        *((f"Kaplan {law.key}", law.fit.status if law.fit else f"skipped: {law.skipped}")
          for law in laws),
        ("Kaplan N_opt(C)", n_opt["status"]),
    )
    return Section(
        title="Kaplan et al. 2020: laws and findings",
        html=_html(runs, len(main), laws, n_opt, findings, figures, icl, evidence, count, iso),
        fits=out_dict,
        headline=headline(laws, n_opt, iso),
        caveats=(CAVEAT, *([_repeated_caveat(repeated)] if len(repeated) else [])),
        statuses=statuses,
    )


def single_pass(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs of at most `MIN_EVIDENCE["max_epochs"]` epochs, those of more); runs without
    a recorded epoch count are kept."""
    epochs = pd.to_numeric(runs.get("epochs", pd.Series(np.nan, runs.index)), errors="coerce")
    more = epochs > MIN_EVIDENCE["max_epochs"]
    return runs[~more], runs[more]


def _repeated_caveat(repeated: pd.DataFrame) -> str:
    return (f"{len(repeated)} completed run(s) saw their training data more than once (up to "
            f"{pd.to_numeric(repeated['epochs']).max():.2g} epochs): they are left out of "
            "Kaplan's laws and findings, which assume no repetition, and enter only the IsoFLOP "
            "profiles (Chinchilla's Approach 2), where each budget's smallest sizes need them.")


CAVEAT = (
    "Kaplan's constants hold for WebText2 with GPT-2's 50,257-token BPE and N up to 1.5e9: "
    "compare exponents, not constants, and mind the range."
)


def _need(table: pd.DataFrame | None, reason: str) -> pd.DataFrame:
    if table is None:
        raise FitInputError(reason)
    return table
