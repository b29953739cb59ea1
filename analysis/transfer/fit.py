"""The transfer law: effective data transferred by pre-training, D_T = k·D_F^α·N^β
(Hernandez, Kaplan, Henighan & McCandlish 2021, arXiv:2102.01293).

A model of N non-embedding parameters pre-trained on a source corpus and fine-tuned on D_F
tokens of a target reaches loss L_ft. D_E is the data a model of the same N trained from
scratch on the target would need to reach L_ft; D_T = D_E − D_F is what pre-training was
worth in target data. How it is measured here, and why:

- The from-scratch law is Chinchilla's L(N, D) = E + A/N^α + B/D^β, fitted on the
  from-scratch runs with `analysis.chinchilla` (Huber on ln L, the published start grid,
  warm starts for the bootstrap). Its floor E + A/N^α, the loss a model of size N reaches
  with unlimited data, makes D_E one closed form,
  D_E = (B / (L_ft − E − A/N^α))^(1/β),
  and says exactly when there is none: a fine-tuned loss at or below the floor is beyond
  anything the from-scratch fit reaches at that N. Such runs are flagged `below_reach` and
  never extrapolated. (Kaplan's eq 1.5 inverts as easily; Chinchilla's form is the one
  this codebase fits most robustly, and at small scale its offset E is not negligible.)
- Ossification: a fine-tuned run that ends worse than the from-scratch fit at its own
  (N, D_F), L_ft > L(N, D_F), i.e. D_T < 0; where a from-scratch run was trained at the
  same (N, D), its loss is compared too.
- The law is fitted in the low-data regime only, as Hernandez et al. do: there D_T follows a
  power law, while as D_F grows the fine-tuning data become most of the effective data,
  D_T bends away and eventually turns negative. The cut is on the fraction of effective data
  from fine-tuning, D_F/D_E ≤ `MAX_FRACTION` (0.5: pre-training is worth at least as much
  as the fine-tuning data). Runs with D_T ≤ 0 have no logarithm and are excluded; every
  exclusion is counted with its reason. The cut reads a measured quantity, so near it the
  response is truncated: a run whose noise lowered its D_T below the cut is dropped. With
  the study's noise this moves the fit by much less than its interval; the excluded runs
  are listed, so the effect can be checked.
- D_T = k·D_F^α·N^β is fitted by least squares on ln D_T (a plane in ln D_F, ln N): D_T
  spans decades and its error is multiplicative (an error δ in L_ft moves ln D_E by
  δ/(β·B·D_E^−β)), the case where least squares in log space is the maximum-likelihood
  fit (as `analysis.fit.fit_rising`).
- Uncertainty is a bootstrap over runs (`strata`): from-scratch and fine-tuned runs are
  resampled within their kinds, parents are held (they are data of neither fit), and each
  draw redoes the from-scratch fit, every D_E and the D_T fit, so the intervals carry the
  from-scratch fit's error, which dominates. The OLS standard errors of a single fit take
  D_E as exact and are labelled so.

Units: D as the table counts it (tokens; bytes for the bytes tokenizer, close to
Hernandez's characters for ASCII code), N non-embedding parameters, losses in nats/token.
"""

from collections.abc import Callable
from functools import partial

import numpy as np
import pandas as pd

from analysis import laws
from analysis.chinchilla import TIGHT, fit_chinchilla, warm_starts
from analysis.result import Fit
from analysis.table import FitInputError

# Canonical columns the law reads: run id, stage (pretrain | finetune), a fine-tune's parent
# run, status (only "completed" runs count), the corpus (from-scratch runs share the
# fine-tunes'), N, D (D_F for a fine-tune) and the early-stopped loss.
COLUMNS = ("run", "stage", "parent", "status", "corpus", "N", "D", "loss")
NAMES = ("k", "alpha", "beta")
# Hernandez et al. 2021, text → Python, D_F in characters, N non-embedding parameters.
PUBLISHED = {"k": 1.9e4, "alpha": 0.18, "beta": 0.38}
MAX_FRACTION = 0.5  # the low-data cut on D_F/D_E
COMPLETED = "completed"
SCRATCH_PARAMS = 5  # E, A, B, alpha, beta of the from-scratch L(N, D)
SAME_POINT_RTOL = 1e-3  # a from-scratch run "at" a fine-tune's (N, D_F)
CUT_RULE = "D_T > 0 and D_F/D_E <= {cut:g}, D_E within the from-scratch fit's reach"
# What makes two runs' corpora the same for the comparison: the text, its split and the
# tokenizer (a fine-tune's `corpus_cache` names its inherited encoding, never the
# from-scratch runs' cache, so it cannot say).
CORPUS_KEYS = ("data.source", "data.paths", "data.tokenizer", "data.val_fraction")


def transfer_table(results: pd.DataFrame) -> pd.DataFrame | None:
    """The columns `analysis.transfer.COLUMNS` names, from a results table: run ← run_id,
    parent ← parent_run, N ← n_params_nonembed, D ← tokens, loss ← best_val_loss (early
    stopping: the best validation loss counts), corpus ← the `CORPUS_KEYS` joined (with the
    vocabulary size for BPE). Columns the table lacks are left out, for the fit to name.
    None when no run is a fine-tune."""
    if "stage" not in results or not (results["stage"] == "finetune").any():
        return None
    sources = {
        "run": "run_id",
        "stage": "stage",
        "parent": "parent_run",
        "status": "status",
        "N": "n_params_nonembed",
        "D": "tokens",
        "loss": "best_val_loss",
    }
    out = pd.DataFrame(
        {name: results[column].to_numpy() for name, column in sources.items() if column in results}
    )
    out["corpus"] = _corpus(results).to_numpy()
    return out


def _corpus(results: pd.DataFrame) -> pd.Series:
    """Each run's target corpus as one string: text, split and tokenizer."""
    keys = [k for k in CORPUS_KEYS if k in results]
    if not keys:
        return results.get("corpus_cache", pd.Series("", index=results.index)).astype(str)
    parts = results[keys].astype(str)
    if "data.vocab_size" in results and "data.tokenizer" in results:
        bpe = results["data.tokenizer"] == "bpe"
        parts = parts.assign(vocab=np.where(bpe, results["data.vocab_size"].astype(str), ""))
    return parts.agg(" | ".join, axis=1)


def classify(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with `kind` (finetune, parent, scratch or other), `parent_id` (the parent's `run`)
    and `skip` (why a fine-tune or from-scratch run does not count; "" when it does).

    Fine-tunes are stage `finetune`; their parents are the runs they name, matched by run
    id or, as a run records its parent by directory name, by the last part of the run id.
    From-scratch runs are the other `pretrain` runs on a fine-tune's corpus. A run that is
    not completed, or a fine-tune whose parent is not, is skipped with the reason. Raises
    `FitInputError` naming a missing column, and naming the parents that are not in the
    table.
    """
    missing = [c for c in COLUMNS if c not in df]
    if missing:
        raise FitInputError(f"transfer needs column(s) {', '.join(missing)}: not in the table")
    out = df.reset_index(drop=True).copy()
    out["run"] = out["run"].astype(str)
    tuned = (out["stage"] == "finetune").to_numpy()
    if not tuned.any():
        raise FitInputError("transfer needs fine-tuned runs (stage 'finetune'); the table has none")
    ids = _parent_ids(out["run"], out.loc[tuned, "parent"])
    out["parent_id"] = pd.Series(ids, index=out.index[tuned]).reindex(out.index)
    status = out.set_index("run")["status"].astype(str)
    parents = set(ids)
    corpora = set(out.loc[tuned, "corpus"].astype(str))
    kind = np.where(tuned, "finetune", "other").astype(object)
    pretrain = (out["stage"] == "pretrain").to_numpy()
    kind[pretrain & out["run"].isin(parents).to_numpy()] = "parent"
    scratch = pretrain & ~out["run"].isin(parents) & out["corpus"].astype(str).isin(corpora)
    kind[scratch.to_numpy()] = "scratch"
    out["kind"] = kind
    skip = []
    for row in out.itertuples():
        if row.kind not in ("finetune", "scratch"):
            skip.append("")
        elif str(row.status) != COMPLETED:
            skip.append(f"status {row.status}")
        elif row.kind == "finetune" and str(status[row.parent_id]) != COMPLETED:
            skip.append(f"parent {row.parent_id} is {status[row.parent_id]}")
        else:
            skip.append("")
    out["skip"] = skip
    return out


def _parent_ids(runs: pd.Series, named: pd.Series) -> list[str]:
    """Each named parent as a run id of the table; `FitInputError` naming those not there."""
    ids = set(runs)
    by_name: dict[str, list[str]] = {}
    for run in runs:
        by_name.setdefault(run.rsplit("/", 1)[-1], []).append(run)
    found, absent = [], []
    for parent in named:
        parent = "" if pd.isna(parent) else str(parent)
        if parent in ids:
            found.append(parent)
        elif len(by_name.get(parent, [])) == 1:
            found.append(by_name[parent][0])
        else:
            found.append("")
            absent.append(parent or "(none recorded)")
    if absent:
        shown = ", ".join(sorted(set(absent))[:3]) + (" …" if len(set(absent)) > 3 else "")
        raise FitInputError(
            f"transfer: {len(absent)} fine-tuned run(s) name parents not in the table ({shown})"
        )
    return found


def effective_data(
    loss: np.ndarray, N: np.ndarray, D_F: np.ndarray, scratch: dict[str, float]
) -> pd.DataFrame:
    """D_E, D_T and what they say, one row per fine-tuned run.

    `loss`, `N`, `D_F`: arrays of shape [runs], or broadcastable to it (nats/token,
    non-embedding parameters, tokens); `scratch`: the from-scratch law's E, A, B, alpha,
    beta. Columns: `reach` (E + A/N^α, the loss no from-scratch run of that N goes below),
    `below_reach`, `scratch_loss` (L(N, D_F)), `D_E` (NaN below reach), `D_T` = D_E − D_F,
    `multiplier` D_E/D_F, `fraction` D_F/D_E, and `ossified` (L_ft > L(N, D_F)).
    """
    p = scratch
    loss, N, D_F = np.broadcast_arrays(*(np.asarray(v, float) for v in (loss, N, D_F)))
    reach = p["E"] + p["A"] * N ** -p["alpha"]
    gap = loss - reach
    below = ~(gap > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        D_E = np.where(below, np.nan, (p["B"] / gap) ** (1 / p["beta"]))
    scratch_loss = laws.chinchilla(N, D_F, **p)
    return pd.DataFrame(
        {
            "reach": reach,
            "below_reach": below,
            "scratch_loss": scratch_loss,
            "D_E": D_E,
            "D_T": D_E - D_F,
            "multiplier": D_E / D_F,
            "fraction": D_F / D_E,
            "ossified": loss > scratch_loss,
        }
    )


def fit_transfer(df: pd.DataFrame, *, cut: float = MAX_FRACTION, method: str = "grid") -> Fit:
    """Fit D_T = k·D_F^α·N^β (Hernandez et al. 2021) on a results table.

    `df` has the canonical `COLUMNS`, one row per run (fine-tunes, their parents and the
    from-scratch runs; other rows are ignored). `cut` is the low-data cut on D_F/D_E;
    `method` ("grid" or "varpro") is the from-scratch `fit_chinchilla`'s. Returns a `Fit`
    with params k, alpha, beta, `tables["runs"]` (every fine-tune: D_E, D_T, multiplier,
    fraction, ossified, in_fit, why not), `tables["scratch"]` and diagnostics (the
    from-scratch fit, the cut, what was excluded and skipped). When the from-scratch fit
    gives no estimate the parameters are NaN and the status says why. Raises
    `FitInputError` for a missing column, fine-tunes whose parents are not in the table,
    fewer than 6 completed from-scratch runs, non-finite or non-positive N, D or loss in a
    run that counts, and fewer than 4 fine-tunes in the low-data regime or ones that span
    a single N or D_F.
    """
    runs = classify(df)
    counting = _numeric(runs[runs["kind"].isin(["finetune", "scratch"]) & (runs["skip"] == "")])
    scratch = counting[counting["kind"] == "scratch"]
    tuned = counting[counting["kind"] == "finetune"]
    law = _scratch_law(scratch, method=method)
    skipped = runs[runs["skip"] != ""]
    diagnostics = {
        "scratch": {
            "params": law.params,
            "status": law.status,
            "n_points": law.n_points,
            "method": method,
            "starts": warm_starts(law).tolist() if law.usable else [],
        },
        "cut": {"max_fraction": cut, "rule": CUT_RULE.format(cut=cut)},
        "skipped": [{"run": r.run, "reason": r.skip} for r in skipped.itertuples()],
        "n_finetuned": len(tuned),
        "n_scratch": len(scratch),
        "stderr_method": "ols on ln D_T, D_E taken as exact (the bootstrap adds the "
        "from-scratch fit's error)",
    }
    table = _runs_table(tuned, skipped, scratch, law.params if law.usable else None, cut)
    tables = {"runs": table, "scratch": _scratch_table(scratch, law)}
    if not law.usable:
        return _no_estimate(law, diagnostics, tables)
    left_out = table.loc[~table["in_fit"], "why_not"]
    diagnostics["excluded"] = left_out[~left_out.str.startswith("skipped")].value_counts().to_dict()
    params, stderr, residuals = _plane(table[table["in_fit"]], cut)
    return Fit(
        law="transfer",
        params=params,
        residuals=residuals,
        n_points=len(residuals),
        variables=("D", "N"),
        status=_status(law),
        stderr=stderr,
        diagnostics=diagnostics,
        tables=tables,
    )


def refitter(fit: Fit, cut: float = MAX_FRACTION) -> Callable[[pd.DataFrame], Fit]:
    """How a bootstrap resample is refitted, in milliseconds: the from-scratch law by
    L-BFGS-B from `fit`'s optimum (and best grid starts) under tight tolerances, whichever
    method found it (as `chinchilla.bootstrap_refit`: 4 ms instead of 60 for VarPro's
    search), then D_E and the D_T plane with `fit`'s cut. Rows are taken by their
    `stratum` (`strata`, added when absent), so the runs are not classified again; the
    result has no tables."""
    starts = np.array(fit.diagnostics["scratch"]["starts"], float)
    return partial(_refit, cut=cut, starts=starts)


def _refit(df: pd.DataFrame, *, cut: float, starts: np.ndarray) -> Fit:
    """The parameters of one bootstrap resample (see `refitter`)."""
    if "stratum" not in df:
        df = df.assign(stratum=strata(df))
    scratch = _numeric(df[df["stratum"] == "scratch"])
    tuned = _numeric(df[df["stratum"] == "finetune"])
    law = _scratch_law(scratch, method="grid", starts=starts)
    if not law.usable:
        return _no_estimate(law, {}, {})
    effective = effective_data(tuned["loss"], tuned["N"], tuned["D"], law.params)
    points = pd.DataFrame(
        {"N": tuned["N"].to_numpy(), "D_F": tuned["D"].to_numpy(), "D_T": effective["D_T"]}
    )
    params, _, residuals = _plane(points[_why_not(effective, cut) == ""], cut)
    return Fit("transfer", params, residuals, len(residuals), ("D", "N"), status=_status(law))


def _scratch_law(scratch: pd.DataFrame, method: str, starts: np.ndarray | None = None) -> Fit:
    """The from-scratch L(N, D); `FitInputError` for too few runs to fit it."""
    if len(scratch) <= SCRATCH_PARAMS:
        raise FitInputError(
            f"transfer: the from-scratch grid has {len(scratch)} completed run(s); its "
            f"L(N, D) fit has {SCRATCH_PARAMS} parameters and needs >= {SCRATCH_PARAMS + 1}"
        )
    return fit_chinchilla(
        scratch[["N", "D", "loss"]],
        method=method,  # type: ignore[arg-type]
        starts=starts,
        lbfgs_options=None if starts is None else TIGHT,
    )


def _status(law: Fit) -> str:
    """ok, or the from-scratch fit's status (usable: on a bound) carried over."""
    return "ok" if law.ok else f"{law.status.split(':')[0]}: from-scratch {law.status}"


def _no_estimate(law: Fit, diagnostics: dict, tables: dict) -> Fit:
    """NaN parameters, with the from-scratch fit's status saying why."""
    kind, _, why = law.status.partition(":")
    return Fit(
        "transfer",
        dict.fromkeys(NAMES, np.nan),
        np.array([]),
        0,
        ("D", "N"),
        status=f"{kind}: the from-scratch L(N, D) fit:{why}",
        diagnostics=diagnostics,
        tables=tables,
    )


def _why_not(effective: pd.DataFrame, cut: float) -> np.ndarray:
    """Why each run is left out of the D_T fit ("" when it is in)."""
    return np.select(
        [effective["below_reach"], ~(effective["D_T"] > 0), effective["fraction"] > cut],
        ["below the from-scratch reach", "D_T <= 0", f"D_F/D_E > {cut:g}"],
        default="",
    )


def _numeric(runs: pd.DataFrame) -> pd.DataFrame:
    """N, D and loss as floats, each finite and positive in every run that counts."""
    out = runs.copy()
    for name in ("N", "D", "loss"):
        values = pd.to_numeric(out[name], errors="coerce").to_numpy(float)
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            shown = ", ".join(out.loc[bad, "run"].head(3))
            raise FitInputError(
                f"transfer: column '{name}' is missing, non-finite or non-positive in "
                f"{int(bad.sum())} completed run(s) ({shown})"
            )
        out[name] = values
    return out


def _runs_table(
    tuned: pd.DataFrame,
    skipped: pd.DataFrame,
    scratch_runs: pd.DataFrame,
    scratch: dict[str, float] | None,
    cut: float,
) -> pd.DataFrame:
    """One row per fine-tune: its numbers (NaN without a from-scratch law), the loss of a
    from-scratch run at its (N, D_F) where there is one, `extrapolated` (D_E beyond every
    from-scratch run's D: the law read past its data), whether the D_T fit uses it and why
    not; skipped fine-tunes last, with their reason."""
    table = (
        tuned[["run", "parent_id", "N", "D", "loss"]]
        .rename(columns={"parent_id": "parent", "D": "D_F"})
        .reset_index(drop=True)
    )
    table["scratch_run_loss"] = [
        _loss_at(scratch_runs, N, D) for N, D in zip(table["N"], table["D_F"], strict=True)
    ]
    if scratch is not None:
        table = pd.concat(
            [table, effective_data(table["loss"], table["N"], table["D_F"], scratch)], axis=1
        )
        table["extrapolated"] = table["D_E"] > scratch_runs["D"].max()
        why = _why_not(table, cut)
    else:
        why = np.full(len(table), "no from-scratch law")
    table["why_not"] = why
    table["in_fit"] = table["why_not"] == ""
    rest = skipped[skipped["kind"] == "finetune"]
    if len(rest):
        rest = pd.DataFrame(
            {
                "run": rest["run"],
                "parent": rest["parent_id"],
                "in_fit": False,
                "why_not": "skipped: " + rest["skip"],
            }
        )
        table = pd.concat([table, rest], ignore_index=True)
    return table


def _loss_at(runs: pd.DataFrame, N: float, D: float) -> float:
    """The best loss of the runs trained at (N, D) within `SAME_POINT_RTOL`; NaN if none."""
    near = np.isclose(runs["N"], N, rtol=SAME_POINT_RTOL) & np.isclose(
        runs["D"], D, rtol=SAME_POINT_RTOL
    )
    return float(runs.loc[near, "loss"].min()) if near.any() else float("nan")


def _scratch_table(scratch: pd.DataFrame, law: Fit) -> pd.DataFrame:
    """The from-scratch runs with the fitted loss at each."""
    out = scratch[["run", "N", "D", "loss"]].reset_index(drop=True)
    out["fitted"] = laws.chinchilla(out["N"], out["D"], **law.params) if law.usable else np.nan
    return out


def _plane(fitted: pd.DataFrame, cut: float) -> tuple[dict, dict, np.ndarray]:
    """k, α, β by least squares of ln D_T on (1, ln D_F, ln N), their OLS standard errors
    (k's by the delta method) and the residuals in ln D_T."""
    need = len(NAMES) + 1
    if len(fitted) < need:
        raise FitInputError(
            f"transfer needs >= {need} fine-tuned runs in the low-data regime "
            f"({CUT_RULE.format(cut=cut)}), got {len(fitted)}"
        )
    for column, name in (("N", "model size N"), ("D_F", "fine-tuning size D_F")):
        if fitted[column].nunique() < 2:
            raise FitInputError(
                f"transfer: the low-data fine-tunes span one {name}; the law needs 2 or more"
            )
    X = np.column_stack([np.ones(len(fitted)), np.log(fitted["D_F"]), np.log(fitted["N"])])
    y = np.log(fitted["D_T"].to_numpy(float))
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    residuals = y - X @ coef
    dof = len(y) - len(coef)
    se = np.full(3, np.nan)
    if dof > 0:
        cov = residuals @ residuals / dof * np.linalg.pinv(X.T @ X)
        se = np.sqrt(np.diag(cov))
    k = float(np.exp(coef[0]))
    params = {"k": k, "alpha": float(coef[1]), "beta": float(coef[2])}
    stderr = {"k": k * float(se[0]), "alpha": float(se[1]), "beta": float(se[2])}
    return params, stderr, residuals


def strata(df: pd.DataFrame) -> pd.Series:
    """Each row's bootstrap stratum: `scratch` and `finetune` for the runs the two fits read,
    resampled within their kinds; every other row (parents, skipped runs) its own, so it is
    always drawn once. Raises `FitInputError` as `classify` does."""
    runs = classify(df)
    counts = runs["kind"].isin(["finetune", "scratch"]) & (runs["skip"] == "")
    return pd.Series(np.where(counts, runs["kind"], "held " + runs["run"]), index=df.index)
