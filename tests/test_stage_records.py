"""Issue 22's hostile-input probe, training side: a refused stage leaves the record of the outputs it did not make
alone; training data with one label is one error line (validate-data says so); a data error in `teachers` is one
stderr line, without library noise before it. The trainer is tests/test_student.py's fake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _data_fixtures import KAGGLE_TRAIN_HEADER, kaggle_row, write_csv
from test_student import _cfg, fake  # noqa: F401 - fake: the trainer stand-in fixture

import arena_kd.student.run as srun
import arena_kd.teachers.run as trun
from arena_kd.common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _fake_fold_of_another_config(stage_dir: Path) -> None:
    """fold0.parquet + sidecar recording other hashes: the stage must refuse to resume over it."""
    from arena_kd.common.io import write_keyed_table

    write_keyed_table(stage_dir / "fold0.parquet", pd.DataFrame({"id": ["x"], "fold": [0]}),
                      {"hashes": {"config": "another", "data": "another", "folds": "another"}})


@pytest.mark.parametrize("stage", ["teachers", "distill"])
def test_refused_resume_keeps_the_resolved_config_of_the_outputs(tmp_path, fake, stage):  # noqa: F811
    """Was: a refused resume (exit 2) overwrote config.resolved.yaml with the refused config."""
    cfg = _cfg(tmp_path, "student.distill.alpha=0")
    sub = f"teachers/{cfg.teachers.models[0].name}" if stage == "teachers" else "student"
    d = cfg.workdir_path / sub
    d.mkdir(parents=True)
    _fake_fold_of_another_config(d)
    record = d.parent / "config.resolved.yaml" if stage == "teachers" else d / "config.resolved.yaml"
    record.write_text("# the record of the outputs already here\n")
    run = trun.run_teachers if stage == "teachers" else srun.run_distill
    with pytest.raises(UserError, match="hash differs"):
        run(cfg)
    assert record.read_text() == "# the record of the outputs already here\n"
    assert fake.calls == []


def test_accepted_stages_write_their_resolved_config(tmp_path, fake):  # noqa: F811
    cfg = _cfg(tmp_path)
    trun.run_teachers(cfg)
    srun.run_distill(cfg)
    for d in ("teachers", "student"):
        assert (cfg.workdir_path / d / "config.resolved.yaml").read_text().startswith("workdir:")


def test_refused_pipeline_keeps_the_workdir_record(tmp_path, fake):  # noqa: F811
    from arena_kd.pipeline import run_pipeline

    cfg = _cfg(tmp_path)
    d = cfg.workdir_path / "teachers" / cfg.teachers.models[0].name
    d.mkdir(parents=True)
    _fake_fold_of_another_config(d)
    (cfg.workdir_path / "config.resolved.yaml").write_text("# old\n")
    with pytest.raises(UserError, match="hash differs"):
        run_pipeline(cfg)
    assert (cfg.workdir_path / "config.resolved.yaml").read_text() == "# old\n"


# --------------------------------------------------------------------------- one label


def _train_file(path: Path, labels: list[int]) -> Path:
    rows = [kaggle_row(100 + i, [f"question {i} about {i % 5}?"], [f"answer a{i}"], [f"answer b{i}"], label=y)
            for i, y in enumerate(labels)]
    return write_csv(path, KAGGLE_TRAIN_HEADER, rows)


def test_one_label_is_refused_for_training(tmp_path, fake):  # noqa: F811
    """Was: validate-data said "(valid)", teachers trained, exit 0."""
    train = _train_file(tmp_path / "one.csv", [0] * 12)
    cfg = _cfg(tmp_path, f"data.train={train}", "data.max_rows=null")
    with pytest.raises(UserError, match=r"one.csv: all 12 labelled rows are 'A wins': a classifier needs rows of at "
                                        r"least two"):
        trun.run_teachers(cfg)
    assert fake.calls == [] and not cfg.folds_path().exists()


def test_a_fold_whose_training_rows_have_one_label_is_refused(tmp_path, fake):  # noqa: F811
    """Two labels overall, but every 'B wins' row sits in one fold: that fold's model would train on 'A wins' only."""
    train = _train_file(tmp_path / "two.csv", [0] * 11 + [1])
    cfg = _cfg(tmp_path, f"data.train={train}", "data.max_rows=null")
    with pytest.raises(UserError, match=r"two.csv with .*folds.csv: the training rows of fold \d \(the rows outside "
                                        r"it\) are all 'A wins'"):
        trun.run_teachers(cfg)
    assert fake.calls == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from arena_kd.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_validate_data_reports_one_label(tmp_path):
    train = _train_file(tmp_path / "one.csv", [2] * 5)
    res = _cli("validate-data", str(train))
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert "(valid)" not in first and "NOT trainable: all 5 labelled rows are 'tie'" in first


# --------------------------------------------------------------------------- one stderr line


@pytest.mark.parametrize("defect", ["one label", "unbalanced quotes"])
def test_data_error_in_teachers_is_the_only_stderr_line(tmp_path, defect):
    """Was: two lines of bitsandbytes / kernels log noise (imported with transformers) before the error line."""
    if defect == "one label":
        train = _train_file(tmp_path / "bad.csv", [1] * 8)
    else:
        train = tmp_path / "bad.csv"
        lines = (ROOT / "data/sample/train.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:3]
        train.write_text("".join(lines) + 'x,"unbalanced\n', encoding="utf-8")
    res = _cli("teachers", "--config", str(SMOKE), "--set", f"workdir={tmp_path / 'w'}", "--set",
               f"data.train={train}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.splitlines() == [res.stderr.strip()] and res.stderr.startswith(f"error: {train}"), res.stderr
