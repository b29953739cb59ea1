"""What a study contributes to the report: one `Section`, assembled by `analysis.page`."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Section:
    """A study's part of the report.

    `html` is the section (image paths relative to the report directory); `fits` is merged
    into `fits.json` at the top level (keys unique across sections); `headline` holds the
    study's answers, `{name: {value, ci, n_points, selection, status, published, verdict}}`,
    shown first on the page and in `fits.json["headline"]`; `caveats` are shown at the top;
    `statuses` lists every fit as (name, status) for the summary.
    """

    title: str
    html: str
    fits: dict[str, Any]
    headline: dict[str, dict[str, Any]] = field(default_factory=dict)
    caveats: tuple[str, ...] = ()
    statuses: tuple[tuple[str, str], ...] = ()
