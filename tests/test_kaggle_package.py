"""`arena-kd package` (arena_kd.kaggle_package, arena_kd.kaggle_wheels): the upload it writes passes every Kaggle rule,
its notebook cell runs kaggle/predict.py on the /kaggle/input paths, the commands come in order, the wheels come from
the index, else a local cache, else only the project's wheel; and every refusal is one line, exit 2, with an
existing --out left as it was. No network: the index step is injected."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from arena_kd.common.errors import UserError
from arena_kd.kaggle_metadata import code_cells, read_json
from arena_kd.kaggle_package import INPUT_ENV, Names, check_upload, code_files, package
from arena_kd.kaggle_wheels import IndexUnreachable, build_wheels, requirements

ROOT = Path(__file__).resolve().parents[1]


def write_wheel(folder: Path, name: str, version: str = "99.0", tag: str = "py3-none-any") -> Path:
    """A minimal wheel pip accepts (name, version and tags in the file name and METADATA)."""
    dist = re.sub(r"[-_.]+", "_", name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-{tag}.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def fake_own_wheel(code_dir: Path, dest: Path) -> Path:
    assert (code_dir / "pyproject.toml").is_file() and (code_dir / "kaggle" / "predict.py").is_file()
    return write_wheel(dest, "arena-kd", "0.1.0")


@pytest.fixture
def run_dir(tmp_path):
    """A trained run's workdir as `arena-kd package` reads it (weights stand-ins; the stacker check is faked)."""
    run = tmp_path / "run"
    export = run / "student" / "export"
    (export / "model").mkdir(parents=True)
    (export / "model" / "model.safetensors").write_bytes(b"weights")
    (export / "export.json").write_text("{}")
    stack = run / "stacking"
    stack.mkdir()
    (stack / "stacker.json").write_text("{}")
    (stack / "stacker_full.txt").write_text("tree")
    (stack / "reliability_stacker.png").write_bytes(b"png")
    (stack / "config.resolved.yaml").write_text("workdir: run\n")
    return run


@pytest.fixture
def stacker_ok(monkeypatch):
    import arena_kd.blend.stacker as stacker

    monkeypatch.setattr(stacker, "load_stacker", lambda d: None)


def test_package_writes_an_upload_kaggle_accepts(run_dir, stacker_ok, tmp_path):
    out = tmp_path / "upload"
    summary = package(run_dir, "alice", out, download=None, own_wheel=fake_own_wheel)
    names = Names("alice")
    assert sorted(p.name for p in out.iterdir()) == ["arena-kd-artifacts", "arena-kd-code", "arena-kd-submission",
                                                      "arena-kd-wheels", "package.json"]
    assert check_upload(out, names) == []
    art = out / "arena-kd-artifacts"
    assert (art / "config.yaml").read_text() == "workdir: run\n"  # the config the stacker was trained with
    assert (art / "student" / "export" / "model" / "model.safetensors").read_bytes() == b"weights"
    assert (art / "stacking" / "stacker_full.txt").is_file() and not list(art.rglob("*.png"))
    code = out / "arena-kd-code"
    assert (code / "kaggle" / "predict.py").read_bytes() == (ROOT / "kaggle" / "predict.py").read_bytes()
    assert not (code / "runs").exists() and not (code / ".git").exists()
    assert [p.name for p in (out / "arena-kd-wheels").glob("*.whl")] == ["arena_kd-0.1.0-py3-none-any.whl"]
    assert summary["wheels"]["source"] == "none" and "only arena-kd's own wheel" in summary["wheels"]["note"]
    kmeta = read_json(out / "arena-kd-submission" / "kernel-metadata.json")
    assert kmeta["dataset_sources"] == ["alice/arena-kd-code", "alice/arena-kd-artifacts", "alice/arena-kd-wheels"]
    assert kmeta["enable_internet"] is False and kmeta["code_file"] == "arena-kd-submission.ipynb"
    assert read_json(out / "package.json") == json.loads(json.dumps(summary))
    q = str(out)
    assert summary["commands"] == [
        f"kaggle datasets create -p {q}/arena-kd-code --dir-mode tar",
        f"kaggle datasets create -p {q}/arena-kd-artifacts --dir-mode tar",
        f"kaggle datasets create -p {q}/arena-kd-wheels --dir-mode tar",
        f"kaggle kernels push -p {q}/arena-kd-submission",
        "kaggle kernels status alice/arena-kd-submission",
        "kaggle competitions submit lmsys-chatbot-arena -f submission.csv -k alice/arena-kd-submission -v 1 "
        "-m 'arena-kd run'",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".upload", "upload."))]  # no temp left


def _fake_input(root: Path, rc: int) -> Path:
    """/kaggle/input with a predict.py that records its arguments and exits ``rc``."""
    script = root / "arena-kd-code" / "kaggle" / "predict.py"
    script.parent.mkdir(parents=True)
    script.write_text("import json, sys\nprint('predicting')\n"
                      f"json.dump(sys.argv[1:], open('argv.json', 'w'))\nsys.exit({rc})\n")
    return root


@pytest.mark.parametrize("rc", [0, 2])
def test_the_notebook_cell_runs_predict_on_the_kaggle_input_paths(run_dir, stacker_ok, tmp_path, rc):
    out = tmp_path / "upload"
    package(run_dir, "alice", out, download=None, own_wheel=fake_own_wheel)
    (cell,) = code_cells(read_json(out / "arena-kd-submission" / "arena-kd-submission.ipynb"))
    assert "'/kaggle/input'" in cell  # on Kaggle the variable is unset
    inp = _fake_input(tmp_path / "input", rc)
    work = tmp_path / "working"
    work.mkdir()
    env = {**os.environ, INPUT_ENV: str(inp)}
    proc = subprocess.run([sys.executable, "-c", cell], cwd=work, env=env, capture_output=True, text=True)
    assert "predicting" in proc.stdout  # the child's output reaches the cell's
    assert json.loads((work / "argv.json").read_text()) == [
        "--artifacts", f"{inp}/arena-kd-artifacts", "--test", f"{inp}/lmsys-chatbot-arena/test.csv",
        "--wheels", f"{inp}/arena-kd-wheels", "--out", "submission.csv"]
    # exit 2 = no valid file was written: the cell fails, so the notebook run is marked failed
    assert (proc.returncode == 0) == (rc == 0) and (rc == 0 or "exited 2" in proc.stderr)


def test_a_second_package_replaces_the_first(run_dir, stacker_ok, tmp_path):
    out = tmp_path / "upload"
    package(run_dir, "alice", out, download=None, own_wheel=fake_own_wheel)
    (out / "stale.txt").write_text("old")
    package(run_dir, "bob", out, download=None, own_wheel=fake_own_wheel)
    assert not (out / "stale.txt").exists() and read_json(out / "package.json")["owner"] == "bob"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "upload"]


def test_a_refusal_leaves_an_existing_upload_as_it_was(run_dir, stacker_ok, tmp_path):
    out = tmp_path / "upload"
    package(run_dir, "alice", out, download=None, own_wheel=fake_own_wheel)
    before = sorted((str(p.relative_to(out)), p.read_bytes() if p.is_file() else b"") for p in out.rglob("*"))

    def unreachable(reqs, dest, python_version):
        (dest / "half.whl").write_bytes(b"half")  # written before failing: must not reach out
        raise IndexUnreachable("Could not fetch URL")

    with pytest.raises(UserError, match=r"could not download the wheels .*Could not fetch URL.*--wheel-cache"):
        package(run_dir, "alice", out, download=unreachable, own_wheel=fake_own_wheel)
    after = sorted((str(p.relative_to(out)), p.read_bytes() if p.is_file() else b"") for p in out.rglob("*"))
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["run", "upload"]


def test_a_folder_not_written_by_package_is_never_replaced(run_dir, stacker_ok, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="was not written by `arena-kd package`"):
        package(run_dir, "alice", out, download=None, own_wheel=fake_own_wheel)
    assert (out / "notes.txt").read_text() == "keep" and [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_dataset_over_kaggle_limits_is_refused(run_dir, stacker_ok, tmp_path):
    with pytest.raises(UserError, match=r"Kaggle: arena-kd-code: [0-9.e-]+ GB; above the 1e-06 GB limit checked"):
        package(run_dir, "alice", tmp_path / "upload", download=None, own_wheel=fake_own_wheel, max_gb=1e-6)
    assert not (tmp_path / "upload").exists()


def test_code_files_leave_out_the_upload_folder():
    files = code_files(exclude=[ROOT / "kaggle"])
    assert "pyproject.toml" in files and "arena_kd/kaggle_package.py" in files
    assert not [f for f in files if f.startswith("kaggle/")]


# --------------------------------------------------------------------------- wheels


def test_requirements_are_predict_py_floors_without_torch():
    reqs = requirements()
    assert "transformers>=5.2" in reqs and "lightgbm>=4.3" in reqs
    assert not [r for r in reqs if r.startswith("torch")]


def test_wheels_from_the_index_when_it_answers(tmp_path):
    calls = []

    def download(reqs, dest, python_version):
        calls.append((reqs, python_version))
        write_wheel(dest, "lightgbm", "4.6.0", "py3-none-manylinux2014_x86_64")
        return ["lightgbm==4.6.0"]

    info = build_wheels(tmp_path / "w", ROOT, python_version="3.10", download=download, own_wheel=fake_own_wheel)
    assert calls == [(requirements(), "3.10")] and info["source"] == "index" and info["python_version"] == "3.10"
    assert info["wheels"] == ["arena_kd-0.1.0-py3-none-any.whl", "lightgbm-4.6.0-py3-none-manylinux2014_x86_64.whl"]


def test_wheels_from_the_cache_when_the_index_is_unreachable(tmp_path):
    cache = tmp_path / "cache"
    for req in requirements():
        write_wheel(cache, req.split(">=")[0])
    write_wheel(cache, "lightgbm", "99.1", "cp311-cp311-win_amd64")  # not for Kaggle's platform: never picked
    write_wheel(cache, "annotated-types", "0.8.0")  # a dependency: goes along
    write_wheel(cache, "arena-kd", "0.0.1")  # an old own wheel: the fresh one is built instead
    write_wheel(cache, "pydantic-core", "2.5", "cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64")  # 3.10 only
    write_wheel(cache, "nvidia-cublas-cu12", "12.4", "py3-none-manylinux2014_x86_64")  # torch's stack: never

    def unreachable(reqs, dest, python_version):
        raise IndexUnreachable("Network is unreachable")

    info = build_wheels(tmp_path / "w", ROOT, cache=cache, download=unreachable, own_wheel=fake_own_wheel)
    assert info["source"] == "cache" and "Network is unreachable" in info["note"]
    assert len(info["wheels"]) == len(requirements()) + 2 and "lightgbm-99.0-py3-none-any.whl" in info["wheels"]
    wheels = info["wheels"]
    assert "annotated_types-0.8.0-py3-none-any.whl" in wheels and "arena_kd-0.0.1-py3-none-any.whl" not in wheels


@pytest.mark.parametrize("wheel, python, fits", [
    ("lightgbm-4.7.0-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "3.11", True),
    ("scipy-1.17.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "3.11", True),
    ("scipy-1.17.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "3.10", False),
    ("pydantic_core-2.5-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "3.10", True),
    ("cryptography-46-cp39-abi3-manylinux2014_x86_64.whl", "3.11", True),
    ("cryptography-46-cp312-abi3-manylinux2014_x86_64.whl", "3.11", False),  # needs 3.12 or newer
    ("numpy-2.4-cp311-cp311-manylinux_2_34_x86_64.whl", "3.11", False),  # glibc 2.34: beyond what is assumed
    ("numpy-2.4-cp311-cp311-win_amd64.whl", "3.11", False),
    ("numpy-2.4-cp311-cp311-manylinux2014_aarch64.whl", "3.11", False),
    ("six-1.17.0-py2.py3-none-any.whl", "3.11", True),
    ("torch-2.6.0-cp311-cp311-manylinux1_x86_64.whl", "3.11", False),  # never shipped: the image's CUDA build stays
    ("nvidia_cublas_cu12-12.4-py3-none-manylinux2014_x86_64.whl", "3.11", False),
    ("triton-3.2.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "3.11", False),
])
def test_which_cached_wheels_fit_the_kaggle_image(wheel, python, fits):
    from arena_kd.kaggle_wheels import fits_target

    assert fits_target(wheel, python) is fits


def test_a_cache_without_a_requirement_for_kaggle_is_refused_naming_it(tmp_path, monkeypatch):
    import arena_kd.kaggle_wheels as kw

    monkeypatch.setattr(kw, "requirements", lambda: ["pyyaml>=6", "lightgbm>=4.3", "pandas>=2.1"])
    cache = tmp_path / "cache"
    write_wheel(cache, "pyyaml", "6.0.2")
    write_wheel(cache, "lightgbm", "4.6.0", "cp311-cp311-win_amd64")  # wrong platform
    write_wheel(cache, "pandas", "2.0.0")  # below the floor
    with pytest.raises(UserError, match=r"cache: no wheel for lightgbm>=4.3, pandas>=2.1 \(Python 3.11, manylinux"):
        build_wheels(tmp_path / "w", ROOT, cache=cache, download=None, own_wheel=fake_own_wheel)
    with pytest.raises(UserError, match="wheel cache folder not found"):
        build_wheels(tmp_path / "w", ROOT, cache=tmp_path / "nope", download=None, own_wheel=fake_own_wheel)


# --------------------------------------------------------------------------- the command line


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from arena_kd.cli import main; main()", "package", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, fragment", [
    (["--owner", "al/ice"], "owner 'al/ice'"),
    (["--owner", "alice", "--prefix", "x" * 44], "51 characters"),
    (["--owner", "alice", "--prefix", "Arena"], "only lower-case"),
    (["--owner", "alice", "--artifacts", "missing"], "missing: run folder not found"),
    (["--owner", "alice", "--no-export"], "no student export"),
    (["--owner", "alice", "--no-stacker"], "stacker not found"),
])
def test_each_refusal_is_one_line_exit_2_and_writes_nothing(run_dir, tmp_path, args, fragment):
    args = list(args)
    if "--no-export" in args:
        args.remove("--no-export")
        (run_dir / "student" / "export" / "export.json").unlink()
    if "--no-stacker" in args:
        args.remove("--no-stacker")
        (run_dir / "stacking" / "stacker.json").unlink()
    if "--artifacts" not in args:
        args += ["--artifacts", str(run_dir)]
    res = run_cli(*args, "--out", "upload", "--no-download", cwd=tmp_path)
    err = res.stderr.strip()
    assert res.returncode == 2 and "\n" not in err and err.startswith("error: ") and fragment in err, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_kaggle_readme_shows_the_cell_package_writes():
    from arena_kd.kaggle_package import notebook_cell

    readme = (ROOT / "kaggle" / "README.md").read_text()
    shown = readme.split("## 3. The notebook: one cell")[1].split("```python\n")[1].split("```")[0]
    assert shown in notebook_cell(Names("alice")) and "predict.py" in shown


def test_the_command_prints_the_kaggle_commands_last(run_dir, stacker_ok, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import arena_kd.kaggle_package as kp
    from arena_kd.cli import app

    monkeypatch.setattr(kp, "build_own_wheel", fake_own_wheel)
    out = tmp_path / "upload"
    res = CliRunner().invoke(app, ["package", "--artifacts", str(run_dir), "--owner", "alice", "--out", str(out),
                                   "--no-download", "--python-version", "3.10"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    lines = res.output.rstrip("\n").split("\n")
    commands = read_json(out / "package.json")["commands"]
    assert lines[-len(commands):] == [f"  {c}" for c in commands] and lines[-len(commands) - 1] == "then, in order:"
    assert "wheels for Python 3.10" in res.output and "only arena-kd's own wheel" in res.output


def test_a_failed_final_rename_puts_the_previous_upload_back(run_dir, stacker_ok, tmp_path, monkeypatch):
    import arena_kd.kaggle_package as kp

    out = tmp_path / "upload"
    package(run_dir, "alice", out, download=None, own_wheel=fake_own_wheel)
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith("upload.tmp"):  # the finished upload, not an atomic file write
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(kp.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        package(run_dir, "bob", out, download=None, own_wheel=fake_own_wheel)
    assert read_json(out / "package.json")["owner"] == "alice"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "upload"]
