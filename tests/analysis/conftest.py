"""Shared data and synthetic tables with known parameters for the analysis tests."""

from pathlib import Path

import pandas as pd
import pytest

from analysis.chinchilla import fit_chinchilla
from analysis.page import write_page
from analysis.table import derive, select
from tests.analysis.synthetic import demo_sweep

# The repository is checked out with `shared/` beside it: <parent>/main and <parent>/shared.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
EPOCH_CSV = SHARED_DATA / "chinchilla_epoch_extracted.csv"
ISOFLOPS_CSV = SHARED_DATA / "isoflops_multisource_openathena.csv"
# Small published tables kept beside the tests (sources in data/README.md).
DATA = Path(__file__).resolve().parent / "data"


def _require(path: Path) -> Path:
    """Skip, naming the file, when the shared data is not checked out beside the repository."""
    if not path.is_file():
        pytest.skip(f"shared data not found at {path} (check out shared/ beside the repository)")
    return path


@pytest.fixture(scope="session")
def epoch() -> pd.DataFrame:
    """Epoch's 240 Chinchilla points: D = C/(6N), the 5 highest losses dropped, as they fit."""
    raw = pd.read_csv(_require(EPOCH_CSV))
    kept = raw.drop(raw["loss"].nlargest(5).index)
    return derive(select(kept, ["N", "C", "loss"], {"N": "Model Size", "C": "Training FLOP"}), "D")


@pytest.fixture(scope="session")
def epoch_grid_fit(epoch: pd.DataFrame):
    """The full 3,125-start grid fit on Epoch's points, made once: it takes seconds."""
    return fit_chinchilla(epoch)


@pytest.fixture(scope="session")
def isoflops() -> pd.DataFrame:
    """Open-Athena's standardised IsoFLOP points from five sources."""
    return pd.read_csv(_require(ISOFLOPS_CSV))


def isoflop_experiment(isoflops: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """One experiment's rows with canonical columns (N, D, C = the nominal budget, loss)."""
    rows = isoflops[isoflops["experiment"] == experiment]
    columns = {"N": "params", "D": "tokens", "C": "budget"}
    return select(rows, ["N", "D", "C", "loss"], columns)


@pytest.fixture(scope="session")
def table3() -> pd.DataFrame:
    """Hoffmann et al. 2022 Table 3: N_opt (params) and D_opt (tokens) against C (flops)."""
    return pd.read_csv(DATA / "chinchilla_table3.csv")


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory) -> Path:
    """A demo-sized report (16 runs with curves, depth and batch-size variations): its
    directory, holding index.html, the figures and fits.json."""
    out = tmp_path_factory.mktemp("report")
    results, curves = demo_sweep()
    write_page(results, curves, out, title="Synthetic demo sweep")
    return out
