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

from arena_kd.common.keys import LABELS

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
    missing = kp.missing_packages([("no-such-dist-arena-kd", None), ("pandas", "999.0")])
    assert missing == ["no-such-dist-arena-kd", "pandas>=999.0"]
    # no wheels folder: logged, the run goes on (the fallback file exists already)
    assert kp.install_from_wheels(["no-such-dist-arena-kd"], None) == ["no-such-dist-arena-kd"]
    assert kp.LABELS == LABELS


def test_requirement_parsing_and_floors(tmp_path):
    """Floors come from the shipped pyproject.toml (extras, markers, ~=, == handled); torch is never listed."""
    kp = _load_script()
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = [\n  "torch>=2.3",\n  "transformers[torch] >= 4.46",\n'
                         '  "numpy~=1.26; python_version >= \'3.10\'",\n  "tqdm",\n  "pandas==2.1.0",\n]\n')
    assert kp.requirements(pyproject) == [("transformers", "4.46"), ("numpy", "1.26"), ("tqdm", None),
                                          ("pandas", "2.1.0")]
    assert kp._release("2.1.0+cu121") == (2, 1, 0) and kp._release("1.0rc1") == (1, 0)
    import importlib.metadata as md

    have = md.version("numpy")
    below = ".".join(str(int(x) + 1) if i == 0 else "0" for i, x in enumerate(have.split(".")[:2]))
    # below the floor → reinstalled
    assert kp.missing_packages([("numpy", have), ("numpy", below)]) == [f"numpy>={below}"]


def test_install_from_wheels_installs_what_is_below_the_floor(tmp_path, monkeypatch):
    """Everything below its floor is installed offline from the wheels folder; when one wheel is missing the others
    are still installed one by one, and what is still missing is returned, never raised."""
    kp = _load_script()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    calls = []

    def fake_call(cmd):
        calls.append(cmd)
        return 1 if any("no-such" in c for c in cmd) else 0

    monkeypatch.setattr(kp.subprocess, "call", fake_call)
    left = kp.install_from_wheels(["numpy>=1.0", "no-such-dist-arena-kd>=1"], wheels)
    assert calls[0][1:7] == ["-m", "pip", "install", "--no-index", "--find-links", str(wheels)]
    assert calls[0][-2:] == ["numpy>=1.0", "no-such-dist-arena-kd>=1"]
    assert [c[-1] for c in calls[1:]] == ["numpy>=1.0", "no-such-dist-arena-kd>=1"]
    assert left == ["no-such-dist-arena-kd>=1"]
    assert not any("torch" in " ".join(c) for c in calls)


def test_print_requirements_matches_pyproject():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--print-requirements"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    kp = _load_script()
    assert proc.stdout.split() == [f"{d}>={v}" if v else d for d, v in kp.requirements()]
    assert any(r.startswith("transformers>=") for r in proc.stdout.split()) and "torch" not in proc.stdout


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
    proc = subprocess.run([sys.executable, str(SCRIPT), "--artifacts", str(tmp_path),
                           "--test", str(tmp_path / "nope.csv")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "test file not found" in proc.stderr


# --------------------------------------------------------------------------- the notebook cell never throws


def _competition(tmp_path: Path, rows: int = 10) -> tuple[Path, list[str]]:
    comp = tmp_path / "input" / "lmsys-chatbot-arena"
    comp.mkdir(parents=True)
    test = pd.read_csv(ROOT / "data/sample/test.csv").head(rows)
    test.to_csv(comp / "test.csv", index=False)
    pd.read_csv(ROOT / "data/sample/train.csv").head(200).to_csv(comp / "train.csv", index=False)
    order = test["id"].astype(str).tolist()[::-1]
    pd.DataFrame({"id": order, **{c: 1 / 3 for c in LABELS}}).to_csv(comp / "sample_submission.csv", index=False)
    return comp, order


def _predict(tmp_path: Path, comp: Path, *extra: str, env_extra: dict | None = None, out: str = "submission.csv"):
    work = tmp_path / "working"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": "", **(env_extra or {})}
    return subprocess.run([sys.executable, str(SCRIPT), "--test", str(comp / "test.csv"), "--out", out,
                           "--time-budget", "5m", "--wheels", str(tmp_path / "no-wheels"), *extra],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300), work


def _assert_prior_file(path: Path, order: list[str], prior: np.ndarray | None = None) -> None:
    sub = pd.read_csv(path, dtype={"id": str})
    assert list(sub.columns) == ["id", *LABELS] and sub["id"].tolist() == order
    p = sub[list(LABELS)].to_numpy()
    assert (p > 0).all() and (p < 1).all() and np.allclose(p.sum(axis=1), 1)
    if prior is not None:
        np.testing.assert_allclose(p, np.tile(prior, (len(order), 1)), atol=1e-9)


def test_stdlib_fallback_equals_the_class_prior_and_reads_any_encoding(tmp_path):
    """write_fallback: the same prior as submission.fallback.class_prior, the sample's order, a latin-1 test with
    CRLF line endings and a 200k-character cell."""
    from arena_kd.submission.fallback import class_prior

    kp = _load_script()
    comp, order = _competition(tmp_path)
    test = pd.read_csv(comp / "test.csv", dtype=str)
    test.loc[2, "response_a"] = '["café ' + "x" * 200_000 + '"]'
    (comp / "test.csv").write_bytes(test.to_csv(index=False, lineterminator="\r\n").encode("latin-1"))
    out = tmp_path / "sub" / "submission.csv"
    n, source = kp.write_fallback(comp / "test.csv", out, train=comp / "train.csv",
                                  sample=comp / "sample_submission.csv")
    assert n == 10 and "class prior" in source
    _assert_prior_file(out, order, class_prior(str(comp / "train.csv"))[0])
    (comp / "sample_submission.csv").unlink()
    kp.write_fallback(comp / "test.csv", out, train=None, sample=comp / "sample_submission.csv")
    _assert_prior_file(out, order[::-1], np.full(3, 1 / 3))


def test_broken_pandas_still_leaves_a_valid_file_and_exit_0(tmp_path):
    """Step 1 needs nothing but the standard library: with `import pandas` failing (a damaged image), the fallback
    is written, the later failure is one 'error:' line, and the cell exits 0."""
    comp, order = _competition(tmp_path)
    shim = tmp_path / "shim" / "pandas"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('pandas is broken in this image')\n")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "config.yaml").write_text((ROOT / "configs/smoke.yaml").read_text())
    proc, work = _predict(tmp_path, comp, "--artifacts", str(artifacts), env_extra={"PYTHONPATH": str(shim.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_prior_file(work / "submission.csv", order)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pandas is broken" in errors[0] and "holds the last valid answer" in errors[0]
    assert "fallback submission.csv written first" in proc.stderr


@pytest.mark.parametrize("artifacts_state", ["missing folder", "invalid config", "bad --set"])
def test_any_later_failure_is_one_line_and_exit_0(tmp_path, artifacts_state):
    comp, order = _competition(tmp_path)
    artifacts = tmp_path / "artifacts"
    extra = []
    if artifacts_state != "missing folder":
        artifacts.mkdir()
        (artifacts / "config.yaml").write_text((ROOT / "configs/smoke.yaml").read_text())
    if artifacts_state == "invalid config":
        (artifacts / "config.yaml").write_text("workdir: [unclosed\n")
    if artifacts_state == "bad --set":
        extra = ["--set", "submission.chunk_rows=-1"]
    proc, work = _predict(tmp_path, comp, "--artifacts", str(artifacts), *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_prior_file(work / "submission.csv", order)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_output_is_the_one_exit_2(tmp_path):
    comp, _ = _competition(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc, _ = _predict(tmp_path, comp, "--artifacts", str(tmp_path / "nope"), out=str(blocker / "submission.csv"))
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] != []
    assert "Traceback" not in proc.stderr


def test_defective_test_file_through_the_entry_point(tmp_path):
    """The issue's cases through the Kaggle command: lone surrogate, null turn, unequal turn counts, latin-1 bytes."""
    comp, order = _competition(tmp_path, rows=12)
    test = pd.read_csv(comp / "test.csv", dtype=str)
    test.loc[3, "response_a"] = '["smile \\ud83d here"]'
    test.loc[7, "prompt"] = '["p1"]'
    test.loc[7, "response_b"] = '["first", null]'
    test.loc[9, "response_b"] = "not json, naïve"
    (comp / "test.csv").write_bytes(test.to_csv(index=False).encode("latin-1"))
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "config.yaml").write_text((ROOT / "configs/smoke.yaml").read_text())
    proc, work = _predict(tmp_path, comp, "--artifacts", str(artifacts))
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_prior_file(work / "submission.csv", order)
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "reading it tolerantly" in proc.stderr
