"""Every console script answers a bad input with one line naming it, exit status 2, no traceback.

The Hydra scripts run as installed (.venv/bin), on `--cfg job` or on configs that fail validation,
so nothing trains; `scaling-report` and `scaling-fit` run in-process.
"""

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_int_fields_take_whole_numbers_in_scientific_notation(tmp_path):
    result = run("scaling-train", "--cfg", "job", "train.tokens=2.5e5", "train.eval_count=2e1",
                 "model.d_ff=1.024e3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in ("tokens: 250000\n", "eval_count: 20\n", "d_ff: 1024\n"):
        assert line in result.stdout
