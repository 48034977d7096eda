"""One import name: the layer folders are installed as arena_kd.<folder> and nothing generic (``data``, ``llm``...)
lands in site-packages; a source checkout (the Kaggle code dataset on sys.path) resolves the same names to its own
files; package data (the embedded sample, the planner's calibration files) travels in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER_FOLDERS = ("common", "data", "llm", "kfold", "blend", "planner", "teachers", "student", "stacking", "submission")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # as `arena-kd package` builds it for the wheels dataset: from the code dataset's files (tracked + unignored)
    from arena_kd.kaggle_package import copy_code
    from arena_kd.kaggle_wheels import build_own_wheel

    out = tmp_path_factory.mktemp("wheel")
    copy_code(out / "code")
    return build_own_wheel(out / "code", out / "dist")


def test_wheel_installs_one_top_level_name_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"arena_kd"}
    for folder in LAYER_FOLDERS:
        assert f"arena_kd/{folder}/__init__.py" in names, folder
    assert "arena_kd/data/sample/train.csv" in names and "arena_kd/planner/calibration_data/README.md" in names
    assert "arena_kd/common/keys.py" in names and "arena_kd/cli.py" in names


def test_installed_wheel_imports_its_own_files(wheel, tmp_path):
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = ("import arena_kd, arena_kd.data.text, arena_kd.common.keys as k; "
            "print(arena_kd.data.text.__file__); print(len(arena_kd.__path__)); print(k.LABELS[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0] == str(unpacked / "arena_kd" / "data" / "text.py")
    assert out[1] == "1"  # an installed package never adds the folder above it to its search path
    assert out[2] == "winner_model_a"


def test_a_source_checkout_on_sys_path_resolves_to_its_own_folders(tmp_path):
    # the Kaggle code dataset: a copy of the repository put first on sys.path (kaggle/predict.py). `-S` skips
    # site-packages, so this venv's editable install cannot answer in its place; these modules are stdlib-only.
    copy = tmp_path / "arena-kd-code"
    for folder in ("arena_kd", "common", "data"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "sample"))
    code = (f"import sys; sys.path.insert(0, {str(copy)!r}); import arena_kd.data.text as t, arena_kd.common.keys; "
            "print(t.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(copy / "data" / "text.py")


def test_the_installed_tool_claims_no_generic_import_name(tmp_path):
    # this venv has arena-kd installed (editable, as `make setup` does): outside the checkout `data` is not taken
    for name in ("data", "llm", "teachers", "student", "stacking", "submission", "common", "kfold", "blend", "planner"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode != 0 and f"No module named '{name}'" in proc.stderr, name
