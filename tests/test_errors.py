"""Every console script answers a bad input with one line naming it, exit status 2, no traceback.

The Hydra scripts run as installed (.venv/bin), on `--cfg job` or on configs that fail validation,
so nothing trains; `scaling-report` and `scaling-fit` run in-process.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main as fit_main
from scaling.cli import report
from scaling.console import exit_status, one_line

BIN = Path(sys.executable).parent


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def assert_one_line(script: str, status: int, stderr: str, *names: str) -> None:
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"{script}: error: "), stderr
    assert status == 2, stderr
    for name in names:
        assert name in stderr


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--cfg", "job", "train.nosuch=1"], ["train.nosuch is not a config key"]),
        (["--cfg", "job", "train.tokns=1"], ["train.tokns", "did you mean train.tokens?"]),
        (["--cfg", "job", "train.batch_size=abc"], ["train.batch_size", "abc"]),
        (["--cfg", "job", "train=3"], ["train"]),
        (["--cfg", "job", "model=nosuch"], ["model=nosuch", "n100k"]),
        (["--cfg", "job", "train.tokens=1.5e0"], ["train.tokens", "not a whole number"]),
        (["--cfg", "job", "train.tokens=[1,2"], ["train.tokens=[1,2"]),
        (["--cfg", "job", "-m"], ["--multirun"]),
        # these reach our validation, which runs before anything is read or trained
        (["model.d_model=-8"], ["model.d_model=-8"]),
        (["train.tokens=${nosuch:}"], ["train.tokens", "nosuch"]),
        # paths that the source would not read: the wrong corpus, silently
        (["data.paths=[corpus/*.txt]"], ["data.paths=['corpus/*.txt']", "data=stdlib",
                                         "add data=files"]),
        (["stage=sft", "stage.init_from=runs/p", "data=sft_stdlib", "data.paths=[p.jsonl]"],
         ["data.paths", "add data=jsonl"]),
        (["data.transfer_paths=[prose/*.md]"], ["data.transfer_paths", "data.transfer=files"]),
        # schedules (issue 16): the field, and what it takes
        (["train.schedule=nosuch"], ["train.schedule", "cosine, wsd, constant"]),
        (["train.warmup=nosuch"], ["train.warmup", "kaplan, porian"]),
        (["train.cooldown_fraction=1.5"], ["train.cooldown_fraction", "between 0 and 1"]),
        (["train.cooldowns=[1e5]"], ["train.cooldowns", "train.schedule=wsd"]),
        (["train.schedule=wsd", "train.tokens=1e6", "train.cooldowns=[3e5,2e5]"],
         ["train.cooldowns", "increasing"]),
        (["train.schedule=wsd", "train.cooldowns=[1e5,3e5]"],
         ["train.cooldowns", "train.tokens=200000"]),
        (["stage.schedule=constant"], ["stage.schedule", "moved to train.schedule"]),
        (["train.warmup_fraction=0.1"], ["train.warmup_fraction", "moved to train.warmup"]),
        # masked LM (issue 19): the rate, and room for [MASK]
        (["stage=mlm", "stage.mask_rate=1.5"], ["stage.mask_rate=1.5", "between 0 and 1"]),
        (["stage=mlm", "data.vocab_size=65535"], ["data.vocab_size=65535", "[MASK]"]),
    ],
)
def test_train_names_the_bad_field_in_one_line(tmp_path, args, names):
    result = run("scaling-train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line("scaling-train", result.returncode, result.stderr, *names)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_int_fields_take_whole_numbers_in_scientific_notation(tmp_path):
    result = run("scaling-train", "--cfg", "job", "train.tokens=2.5e5", "train.eval_count=2e1",
                 "model.d_ff=1.024e3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line in ("tokens: 250000\n", "eval_count: 20\n", "d_ff: 1024\n"):
        assert line in result.stdout


def test_bench_takes_the_same_overrides_and_errors(tmp_path):
    result = run("scaling-bench", "model.n_head=3", cwd=tmp_path)
    assert_one_line("scaling-bench", result.returncode, result.stderr, "model.n_head=3")


SWEEP = """
defaults:
  - config
  - {sweeper}
  - _self_
train:
  batch_size: 4000  # 256,000 tokens a step: every budget below fails validation, untrained
hydra:
  mode: MULTIRUN
  sweep:
    dir: {tmp}/runs
  sweeper:
{grid}
"""


def _sweep(tmp_path: Path, sweeper: str, grid: str) -> subprocess.CompletedProcess:
    (tmp_path / "sweep.yaml").write_text(SWEEP.format(sweeper=sweeper, tmp=tmp_path, grid=grid))
    return run("scaling-train", "--config-dir", str(tmp_path), "--config-name", "sweep",
               cwd=tmp_path)


@pytest.mark.parametrize(
    ("sweeper", "grid"),
    [
        ("override hydra/sweeper: basic", "    params:\n      train.tokens: 1e5,2.5e5"),
        ("override hydra/sweeper: study", "    grids:\n      nd:\n        train.tokens: 1e5,2.5e5"),
    ],
)
def test_sweep_grids_take_scientific_notation(tmp_path, sweeper, grid):
    result = _sweep(tmp_path, sweeper, grid)
    # composed as the integer 100000, then refused by validation (below one batch): untrained
    assert_one_line("scaling-train", result.returncode, result.stderr, "train.tokens=100000 ")


def test_a_bad_grid_value_names_the_grid_and_key(tmp_path):
    grid = ("    grids:\n      good:\n        train.tokens: 1e6\n"
            "      bad:\n        train.tokens: 1.5e0")
    result = _sweep(tmp_path, "override hydra/sweeper: study", grid)
    assert_one_line("scaling-train", result.returncode, result.stderr,
                    "hydra.sweeper.grids.bad", "train.tokens", "1.5")
    assert not (tmp_path / "runs").exists()


def _report(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        report(list(argv))
    return exit_info.value.code, capsys.readouterr().err


def test_report_names_a_path_that_is_not_a_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    status, err = _report(capsys, str(tmp_path / "file"))
    assert_one_line("scaling-report", status, err, f"{tmp_path / 'file'} is not a directory")
    status, err = _report(capsys)  # a usage error: one line too, not usage + error
    assert_one_line("scaling-report", status, err, "sweep_dir")


def test_report_summarises_many_broken_runs_in_one_line(tmp_path, capsys):
    for i in range(30):
        (tmp_path / f"r{i:02d}").mkdir()
        (tmp_path / f"r{i:02d}" / "summary.json").write_text("{broken")
    status, err = _report(capsys, str(tmp_path))
    assert_one_line("scaling-report", status, err, "no run records", "skipped 30 run directories",
                    "r00")
    assert "r29" not in err


def _fit(capsys, *argv: str) -> tuple[int, str]:
    status = fit_main(list(argv))
    return status, capsys.readouterr().err


def test_fit_names_a_missing_table(tmp_path, capsys):
    status, err = _fit(capsys, str(tmp_path / "absent.csv"), "--law", "power")
    assert_one_line("scaling-fit", status, err, "absent.csv")


def test_fit_names_a_missing_column_and_cuts_the_list_of_columns(tmp_path, capsys):
    table = pd.DataFrame({f"col{i}": [1.0, 2.0] for i in range(40)})
    table.to_csv(tmp_path / "t.csv", index=False)
    status, err = _fit(capsys, str(tmp_path / "t.csv"), "--law", "power", "--N", "size")
    assert_one_line("scaling-fit", status, err, "missing column 'size'", "and 34 more")


def test_fit_names_an_output_it_cannot_write(tmp_path, capsys):
    n = np.geomspace(1e6, 1e9, 8)
    pd.DataFrame({"N": n, "loss": 2 + (n / 1e5) ** -0.3}).to_csv(tmp_path / "t.csv", index=False)
    status, err = _fit(capsys, str(tmp_path / "t.csv"), "--law", "power",
                       "--plot", str(tmp_path / "absent" / "fit.png"))
    assert_one_line("scaling-fit", status, err, str(tmp_path / "absent" / "fit.png"))


def test_a_bug_is_one_line_with_status_1_and_a_traceback_on_request(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("SCALING_DEBUG", raising=False)
    error = KeyError("n_layer")
    assert exit_status(error, "scaling-train") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected KeyError" in err and "SCALING_DEBUG=1" in err
    monkeypatch.setenv("SCALING_DEBUG", "1")
    with pytest.raises(KeyError):
        exit_status(error, "scaling-train")


def test_one_line_joins_lines_and_cuts_long_lists():
    assert one_line("Could not override 'x'.\nTo append use +x=1") == (
        "Could not override 'x'. To append use +x=1")
    assert one_line("first paragraph\n\nConfig search path:\n\tmany lines") == "first paragraph"
    dropped = one_line(f"dropped points: {', '.join(str(i) for i in range(1000))}")
    assert dropped == "dropped points: 0, 1, 2, 3, 4, 5 and 994 more"


def test_a_job_slurm_refuses_is_the_users_to_fix():
    """sbatch refusing a request (a GPU on a CPU partition) is exit 2 with the launcher keys
    to check; a job that ran and failed stays a bug. In a subprocess: importing submitit
    points its log handler at the sys.stderr of the moment, which pytest's capture closes."""
    script = textwrap.dedent("""
        import sys
        from submitit.core.utils import FailedJobError
        from scaling.console import exit_status
        refused = FailedJobError("Command 'sbatch x.sh' returned non-zero exit status 1.\\n"
                                 "sbatch: error: Invalid generic resource (gres) specification")
        ran = FailedJobError("Job 12 raised ValueError")
        sys.exit(10 * exit_status(refused, "scaling-train") + exit_status(ran, "scaling-train"))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 21, result.stderr
    refused, ran = result.stderr.splitlines()
    assert "Invalid generic resource (gres) specification" in refused
    assert "hydra.launcher.partition, gpus_per_node" in refused
    assert ran.startswith("scaling-train: error: unexpected FailedJobError")
