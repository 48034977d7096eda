"""kaggle/predict.py: the one-line Kaggle entry point (run as a subprocess, the way the notebook runs it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd import LABELS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "kaggle" / "predict.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("kaggle_predict", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_requirements_and_missing_packages():
    kp = _load_script()
    reqs = dict(kp.requirements())
    assert "transformers" in reqs and "torch" not in reqs  # torch is never reinstalled on Kaggle
    assert kp.missing_packages(list(reqs.items())) == []  # this venv has everything
    assert kp.missing_packages([("no-such-dist-arena-kd", None), ("pandas", "999.0")]) == ["no-such-dist-arena-kd", "pandas>=999.0"]
    with pytest.raises(SystemExit, match="no wheels folder"):
        kp.install_from_wheels(["no-such-dist-arena-kd"], None)


def test_kaggle_entry_point_writes_valid_file_without_student_or_stacker(tmp_path):
    """Artifacts holding only the config (student and stacker missing): the run still writes a valid
    submission via the class prior, ordered like sample_submission.csv, offline."""
    comp = tmp_path / "input" / "lmsys-chatbot-arena"
    comp.mkdir(parents=True)
    test = pd.read_csv(ROOT / "data/sample/test.csv").head(10)
    test.to_csv(comp / "test.csv", index=False)
    pd.read_csv(ROOT / "data/sample/train.csv").head(200).to_csv(comp / "train.csv", index=False)
    order = test["id"].astype(str).tolist()[::-1]
    pd.DataFrame({"id": order, **{c: 1 / 3 for c in LABELS}}).to_csv(comp / "sample_submission.csv", index=False)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "config.yaml").write_text((ROOT / "configs/smoke.yaml").read_text())
    work = tmp_path / "working"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--artifacts", str(artifacts), "--test", str(comp / "test.csv"),
                           "--out", "submission.csv", "--time-budget", "5m", "--wheels", str(tmp_path / "no-wheels")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sub = pd.read_csv(work / "submission.csv", dtype={"id": str})
    assert sub["id"].tolist() == order
    p = sub[list(LABELS)].to_numpy()
    assert (p > 0).all() and (p < 1).all() and np.allclose(p.sum(axis=1), 1)
    paths = pd.read_csv(work / "submission.paths.csv")
    assert set(paths["head"]) == {"prior"}
    assert "student failed to load" in proc.stderr


def test_kaggle_entry_point_missing_test_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--artifacts", str(tmp_path), "--test", str(tmp_path / "nope.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "test file not found" in proc.stderr
