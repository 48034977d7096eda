"""The real `arena-kd` console script: help for every command, exit 2 with one line on user mistakes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _data_fixtures import kaggle_row, write_csv, write_kaggle_train

COMMANDS = ["teachers", "distill", "stack", "submission", "evaluate", "validate-data", "plan", "package", "all",
            "make-pairs"]
SCRIPT = Path(sys.executable).parent / "arena-kd"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-c", "from arena_kd.cli import main; main()"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=120)


def assert_user_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and "\n" not in err, err
    assert err.startswith("error: ")
    for f in fragments:
        assert f in err, err
    return err


def test_top_level_help_lists_commands():
    res = run_cli("--help")
    assert res.returncode == 0
    for c in COMMANDS:
        assert c in res.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    from typer.testing import CliRunner

    from arena_kd.cli import app

    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output and len(res.output.split("\n")) > 4
    # package reads a run folder, make-pairs data files: no config
    if command not in ("evaluate", "validate-data", "package", "make-pairs"):
        assert "--config" in res.output and "--set" in res.output


def test_make_pairs_user_errors_are_one_line(tmp_path):
    out = tmp_path / "pairs.csv"
    assert_user_error(run_cli("make-pairs", "--from", "nope.csv", "--exclude", "data/sample/test.csv", "--out",
                              str(out)), "nope.csv")
    assert not out.exists()


def test_missing_config_file():
    assert_user_error(run_cli("teachers", "--config", "configs/nope.yaml"), "configs/nope.yaml: config file not found")


def test_bad_config_and_bad_set(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path("configs/smoke.yaml").read_text() + "\nbogus_section: 1\n")
    assert_user_error(run_cli("distill", "--config", str(bad)), f"{bad}: bogus_section: unknown key")
    assert_user_error(run_cli("stack", "--config", "configs/smoke.yaml", "--set", "folds.n_folds=1"), "folds.n_folds",
                      "greater than or equal to 2")


def test_validate_data_on_sample():
    res = run_cli("validate-data", "data/sample/train.csv")
    assert res.returncode == 0, res.stderr
    assert "1958 rows (valid)" in res.stdout and "labels:" in res.stdout
    assert "turns per row" in res.stdout and "p95" in res.stdout


def test_validate_data_malformed_and_missing(tmp_path):
    row = kaggle_row(2, ["q"], ["a"], ["b"], label=1)
    row[6] = 1  # two winners
    path = write_csv(tmp_path / "train.csv", ["id", "model_a", "model_b", "prompt", "response_a", "response_b",
                                              "winner_model_a", "winner_model_b", "winner_tie"],
                     [kaggle_row(1, ["q"], ["a"], ["b"]), row])
    assert_user_error(run_cli("validate-data", str(path)), f"{path}: row 2 (line 3)", "exactly one-hot")
    assert_user_error(run_cli("validate-data", str(tmp_path / "missing.csv")), "file not found")
    assert_user_error(run_cli("validate-data", str(path), "--format", "tsv"), "unknown format")


def test_evaluate(tmp_path):
    res = run_cli("evaluate", "--pred", "data/sample/sample_submission.csv", "--labels", "data/sample/test_labels.csv")
    assert res.returncode == 0, res.stderr
    assert "log loss: 1.09861" in res.stdout and "accuracy:" in res.stdout and "tie" in res.stdout
    labels = write_kaggle_train(tmp_path / "labels.csv", n=3)
    assert_user_error(run_cli("evaluate", "--pred", "data/sample/sample_submission.csv", "--labels", str(labels)),
                      "ids do not match")


def test_usage_error_exits_2():
    res = run_cli("evaluate", "--pred", "x.csv")  # --labels missing
    assert res.returncode == 2 and "Traceback" not in res.stderr
