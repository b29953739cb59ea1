"""A Kaplan finding's verdict and the minimum evidence a study must hold before a finding is
called "reproduced" (runs, decades of N, no repeated data): the rule every finding shares."""

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from analysis.kaplan.constants import FINDINGS, MIN_EVIDENCE
from analysis.result import jsonable


@dataclass(frozen=True)
class Finding:
    """One of Kaplan's qualitative findings: the verdict, why, and the numbers behind it."""

    number: int
    verdict: str
    evidence: str
    reason: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return FINDINGS[self.number]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; tables become lists of records."""
        numbers = {
            k: v.to_dict(orient="records") if isinstance(v, pd.DataFrame) else v
            for k, v in self.numbers.items()
        }
        return jsonable(asdict(self) | {"title": self.title, "numbers": numbers})


def study_evidence(runs: pd.DataFrame, finding: Finding | None = None) -> dict[str, float]:
    """What the runs hold against `MIN_EVIDENCE`: completed runs, decades of N, epochs; with
    a `finding` that records the runs it used (`numbers["run_ids"]`), those runs only."""
    used = finding.numbers.get("run_ids") if finding is not None else None
    if used is not None and "run_id" in runs:
        runs = runs[runs["run_id"].isin(used)]
    N = pd.to_numeric(runs.get("N", pd.Series(dtype=float)), errors="coerce").dropna()
    epochs = pd.to_numeric(runs.get("epochs", pd.Series(dtype=float)), errors="coerce").dropna()
    return {
        "runs": len(runs),
        "decades_N": float(np.log10(N.max() / N.min())) if len(N) and N.min() > 0 else 0.0,
        "max_epochs": float(epochs.max()) if len(epochs) else float("nan"),
    }


def minimum_evidence(evidence: dict[str, float]) -> str:
    """"" when the study holds the minimum evidence for "reproduced", else what it lacks."""
    lacking = []
    if evidence["runs"] < MIN_EVIDENCE["runs"]:
        lacking.append(f"{evidence['runs']} completed runs (needs {MIN_EVIDENCE['runs']})")
    if evidence["decades_N"] < MIN_EVIDENCE["decades_N"]:
        lacking.append(
            f"N over {evidence['decades_N']:.2g} decades (needs {MIN_EVIDENCE['decades_N']:g})"
        )
    if evidence["max_epochs"] > MIN_EVIDENCE["max_epochs"]:
        lacking.append(f"up to {evidence['max_epochs']:.2g} epochs (needs ≤ 1: no repeated data)")
    return "; ".join(lacking)


def gate(finding: Finding, evidence: dict[str, float]) -> Finding:
    """"reproduced" becomes "partly" when the study lacks the minimum evidence, saying why."""
    lacking = minimum_evidence(evidence)
    if finding.verdict != "reproduced" or not lacking:
        return finding
    reason = "; ".join(filter(None, (finding.reason, f"below the minimum evidence: {lacking}")))
    return replace(finding, verdict="partly", reason=reason)
