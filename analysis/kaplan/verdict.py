"""A Kaplan finding's verdict, the criterion it is judged by, and the minimum evidence the
rows it uses must hold before it is called "reproduced" (runs, decades spanned in its
variable, no repeated data): the rule every finding shares, and the one line that states it.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from analysis.kaplan.constants import CRITERIA, FINDINGS, MIN_EVIDENCE, VERDICTS
from analysis.result import jsonable


@dataclass(frozen=True)
class Selection:
    """The rows a finding is judged on: their run ids, and the variable whose range they
    must span (the narrowest, when the finding reads several)."""

    run_ids: tuple[str, ...]
    variable: str
    decades: float

    @classmethod
    def of(cls, rows: pd.DataFrame, variables: Sequence[str], run: str = "run_id") -> "Selection":
        """The runs in column `run` of `rows`, and the narrowest of `variables` over them."""
        spans = {v: decades(rows[v]) if v in rows else 0.0 for v in variables}
        narrowest = min(spans, key=spans.get)
        run_ids = tuple(sorted(map(str, rows[run].unique()))) if run in rows else ()
        return cls(run_ids, narrowest, spans[narrowest])


@dataclass(frozen=True)
class Finding:
    """One of Kaplan's qualitative findings: the verdict, why, and the numbers behind it.

    `measured` is the value held against the finding's criterion (`CRITERIA`), `met` whether
    it meets it for "reproduced"; `selection` names the rows it used and `held` is what they
    hold against `MIN_EVIDENCE` (filled by `gate`). A finding cannot be "reproduced" unless
    its criterion is met.
    """

    number: int
    verdict: str
    evidence: str
    reason: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: tuple[str, ...] = ()
    measured: str = ""
    met: bool = False
    selection: Selection | None = None
    held: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"finding {self.number}: unknown verdict {self.verdict!r}")
        if self.verdict == "reproduced" and not self.met:
            raise ValueError(f"finding {self.number} is 'reproduced' but fails its criterion")

    @property
    def title(self) -> str:
        return FINDINGS[self.number]

    @property
    def criterion(self) -> str:
        return CRITERIA[self.number]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; tables become lists of records."""
        numbers = {
            k: v.to_dict(orient="records") if isinstance(v, pd.DataFrame) else v
            for k, v in self.numbers.items()
        }
        return jsonable(
            asdict(self)
            | {
                "title": self.title,
                "numbers": numbers,
                "criterion": self.criterion,
                "minimum_evidence": MIN_EVIDENCE,
                "explanation": explain(self),
            }
        )


def decades(values: pd.Series) -> float:
    """Decades spanned by the finite positive `values` (0 with fewer than two)."""
    x = pd.to_numeric(values, errors="coerce")
    x = x[np.isfinite(x) & (x > 0)]
    return float(np.log10(x.max() / x.min())) if len(x) else 0.0


def study_evidence(runs: pd.DataFrame) -> dict[str, float]:
    """What the whole study holds: completed runs, decades of N, the most epochs any run saw."""
    return {
        "runs": len(runs),
        "decades_N": decades(runs.get("N", pd.Series(dtype=float))),
        "max_epochs": _max_epochs(runs),
    }


def held(selection: Selection | None, runs: pd.DataFrame) -> dict[str, Any]:
    """What a finding's rows hold against `MIN_EVIDENCE`: their runs, the decades of their
    variable, and the most epochs any of them saw (epochs read from `runs` by run id)."""
    if selection is None:
        return {"runs": 0, "variable": "", "decades": 0.0, "max_epochs": float("nan")}
    used = runs[runs["run_id"].astype(str).isin(selection.run_ids)] if "run_id" in runs else runs
    return {
        "runs": len(selection.run_ids),
        "variable": selection.variable,
        "decades": selection.decades,
        "max_epochs": _max_epochs(used),
    }


def lacking(evidence: dict[str, Any]) -> str:
    """ "" when a finding's rows hold the minimum evidence for "reproduced", else what they lack."""
    short = []
    if evidence["runs"] < MIN_EVIDENCE["runs"]:
        short.append(f"{evidence['runs']} runs (needs {MIN_EVIDENCE['runs']})")
    if evidence["decades"] < MIN_EVIDENCE["decades"]:
        short.append(
            f"{evidence['variable'] or 'its variable'} over {evidence['decades']:.2g} decades "
            f"(needs {MIN_EVIDENCE['decades']:g})"
        )
    if evidence["max_epochs"] > MIN_EVIDENCE["max_epochs"]:
        short.append(f"up to {evidence['max_epochs']:.2g} epochs (needs ≤ 1: no repeated data)")
    return "; ".join(short)


def gate(finding: Finding, runs: pd.DataFrame) -> Finding:
    """The finding with what its own rows hold (`held`); "reproduced" becomes "partly" when
    they lack the minimum evidence, saying what they lack."""
    evidence = held(finding.selection, runs)
    finding = replace(finding, held=evidence)
    short = lacking(evidence) if finding.selection else "no rows recorded"
    if finding.verdict != "reproduced" or not short:
        return finding
    reason = "; ".join(filter(None, (finding.reason, f"below the minimum evidence: {short}")))
    return replace(finding, verdict="partly", reason=reason)


def explain(finding: Finding) -> str:
    """The one line every finding prints: its criterion, the value measured against it, and
    the minimum evidence for "reproduced" against what its rows hold."""
    measured = finding.measured or "nothing (not measured)"
    if finding.measured:
        measured += ": criterion met" if finding.met else ": criterion not met"
    minimum = (
        f"{MIN_EVIDENCE['runs']}+ runs, {MIN_EVIDENCE['decades']:g}+ decade in the finding's "
        f"variable, ≤ {MIN_EVIDENCE['max_epochs']:g} epoch"
    )
    e = finding.held
    if e and e["runs"]:
        epochs = (
            f"up to {e['max_epochs']:.2g} epochs"
            if np.isfinite(e["max_epochs"])
            else "epochs not recorded"
        )
        rows = f"{e['runs']} runs, {e['variable']} over {e['decades']:.2g} decades, {epochs}"
    else:
        rows = "none recorded"
    return (
        f"Criterion: {finding.criterion}. Measured: {measured}. Minimum evidence for "
        f"reproduced: {minimum}; its rows: {rows}."
    )


def _max_epochs(runs: pd.DataFrame) -> float:
    epochs = pd.to_numeric(runs.get("epochs", pd.Series(dtype=float)), errors="coerce").dropna()
    return float(epochs.max()) if len(epochs) else float("nan")
