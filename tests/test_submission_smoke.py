"""submission on the REAL smoke pipeline (teachers → distill → stack on configs/smoke.yaml), no fakes.

The three training stages take ~1.5 min on one CPU core, too long for every `make test`; so this runs when
ARENA_KD_SMOKE_WORKDIR names a finished smoke workdir (reused as is) or ARENA_KD_SMOKE=1 (built here).
To make it the default integration test, drop the skip and build the workdir in a session fixture.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd import LABELS
from arena_kd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (os.environ.get("ARENA_KD_SMOKE_WORKDIR") or os.environ.get("ARENA_KD_SMOKE")),
                                reason="set ARENA_KD_SMOKE=1 (or ARENA_KD_SMOKE_WORKDIR) for the real smoke pipeline")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    wd = os.environ.get("ARENA_KD_SMOKE_WORKDIR")
    if wd:
        cfg = load_config(ROOT / "configs/smoke.yaml", [f"workdir={wd}"])
    else:
        from stacking.run import run_stacking
        from student.run import run_distill
        from teachers.run import run_teachers

        cfg = load_config(ROOT / "configs/smoke.yaml", [f"workdir={tmp_path_factory.mktemp('smoke')}"])
        run_teachers(cfg)
        run_distill(cfg)
        run_stacking(cfg)
    assert (cfg.workdir_path / "student/export/export.json").is_file() and (cfg.workdir_path / "stacking").is_dir()
    return cfg


def _probs(path):
    return pd.read_csv(path, dtype={"id": str}).set_index("id")


def test_smoke_submission_valid_and_swap_symmetric(smoke, tmp_path):
    from submission.run import run_submission

    res = run_submission(smoke, out=str(tmp_path / "a.csv"), progress=False)
    assert res.counts == {"stacker+tta": 496}
    a = _probs(tmp_path / "a.csv")
    assert a.index.tolist() == pd.read_csv(ROOT / "data/sample/sample_submission.csv", dtype={"id": str})["id"].tolist()
    p = a[list(LABELS)].to_numpy()
    assert np.isfinite(p).all() and (p > 0).all() and (p < 1).all() and np.allclose(p.sum(1), 1)
    test = pd.read_csv(ROOT / "data/sample/test.csv")
    test.rename(columns={"response_a": "response_b", "response_b": "response_a"}).to_csv(tmp_path / "test.csv", index=False)
    run_submission(smoke, test=str(tmp_path / "test.csv"), out=str(tmp_path / "b.csv"), progress=False)
    b = _probs(tmp_path / "b.csv").loc[a.index]
    assert np.abs(a[LABELS[0]].to_numpy() - b[LABELS[1]].to_numpy()).mean() < 0.02
    assert np.abs(a[LABELS[2]].to_numpy() - b[LABELS[2]].to_numpy()).mean() < 0.02


def test_smoke_tiny_budget_and_broken_student(smoke, tmp_path):
    from submission.run import run_submission

    assert run_submission(smoke, out=str(tmp_path / "c.csv"), time_budget="1s", progress=False).counts == {"features_only+none": 496}
    broken = tmp_path / "export"
    shutil.copytree(smoke.workdir_path / "student/export", broken)
    (broken / "model" / "config.json").write_text("{not json")
    cfg = smoke.model_copy(deep=True)
    cfg.submission.student_dir = str(broken)
    res = run_submission(cfg, out=str(tmp_path / "d.csv"), progress=False)
    assert res.counts == {"features_only+none": 496}
    assert len(_probs(tmp_path / "d.csv")) == 496
