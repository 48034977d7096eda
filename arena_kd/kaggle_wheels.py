"""The wheels dataset: what ``kaggle/predict.py`` installs offline on Kaggle, built for the Kaggle image's Python and
platform, always with this project's own wheel.

- The requirements are ``kaggle/predict.py --print-requirements``: the floors of pyproject.toml, torch excluded (the
  one list predict.py checks at run time).
- From the package index (``download_from_index``): pip resolves the requirements *with* their dependencies for the
  target (``--platform`` manylinux 2.17-2.28 x86_64, ``--python-version X --implementation cp
  --only-binary=:all:``, a dry run that reads metadata only), then downloads exactly that set **without** torch and
  its CUDA stack (torch, triton, nvidia-*: the image's CUDA build must stay, and they are gigabytes).
- From a local wheel cache (``copy_from_cache``: no network): pip picks from the cache a wheel of every requirement at
  its floor for the same target (``--no-index --find-links``); a requirement with no wheel is refused, naming them
  all. Dependencies cannot be resolved there (peft needs torch, which the cache should not hold), so every other
  wheel of the cache built for the target (by its file name's tags) goes along: a previous wheels folder is a
  complete cache.
- ``build_own_wheel``: ``pip wheel --no-deps`` of the code dataset (offline with setuptools installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from arena_kd.common.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# every manylinux tag from glibc 2.17 (manylinux2014, with pip's 2010/1 aliases) to 2.28: pip does not expand a
# manylinux_2_X tag to the older ones, and the wheels are spread over them (measured against PyPI: with manylinux2014
# alone "No matching distribution found for lightgbm>=4.3", tagged 2_28; with 2014 + 2_28, the same for
# bitsandbytes>=0.48, tagged 2_24). assumption: the Kaggle image's glibc is 2.28 or newer
PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{v}_x86_64" for v in range(17, 29)))
PLATFORM = "manylinux x86_64"  # how the target is named in messages
# assumption: the Kaggle image's Python. It was 3.10 from 2023 (Kaggle/docker-python PR 1231) and has moved on since;
# no public source here gives today's version, so it is a flag (`--python-version`); check `!python --version`.
KAGGLE_PYTHON = "3.11"
_NEVER_SHIP = re.compile(r"^(torch|triton|nvidia-.*)$")  # kaggle/predict.py never installs torch either


class IndexUnreachable(Exception):
    """The package index could not give the wheels (no network, a proxy, a missing wheel for the target)."""


def requirements() -> list[str]:
    """``name>=floor`` of every runtime dependency, torch excluded, as kaggle/predict.py reads them."""
    out = subprocess.run([sys.executable, str(REPO / "kaggle" / "predict.py"), "--print-requirements"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def _target(python_version: str) -> list[str]:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return ["--only-binary=:all:", *platforms, "--python-version", python_version, "--implementation", "cp"]


def _pip(args: list[str], isolated: bool = False) -> subprocess.CompletedProcess:
    """pip in this interpreter; ``isolated``: no pip config or PIP_* variables (their find-links or index would
    answer in the cache's place)."""
    env = None
    if isolated:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in (proc.stderr or proc.stdout or "").splitlines() if x.strip() and "WARNING" not in x]
    return lines[-1].strip() if lines else f"exit {proc.returncode}"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def download_from_index(reqs: list[str], dest: Path, python_version: str) -> list[str]:
    """Resolve ``reqs`` with their dependencies for the target and download them into ``dest``, torch's stack left
    out; returns the ``name==version`` downloaded. Raises IndexUnreachable with pip's last line."""
    net = ["--retries", "1", "--timeout", "20", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        proc = _pip(["install", "--dry-run", "--ignore-installed", *_target(python_version), *net,
                     "--target", str(Path(tmp) / "target"), "--report", str(report), *reqs])
        if proc.returncode != 0 or not report.is_file():
            raise IndexUnreachable(_last_line(proc))
        items = json.loads(report.read_text())["install"]
    pins = sorted({f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
                   if not _NEVER_SHIP.match(_norm(i["metadata"]["name"]))})
    proc = _pip(["download", "--no-deps", *_target(python_version), *net, "-d", str(dest), *pins])
    if proc.returncode != 0:
        raise IndexUnreachable(_last_line(proc))
    return pins


def fits_target(wheel: str, python_version: str) -> bool:
    """A wheel file name built for the target (CPython ``python_version``, one of PLATFORMS or pure), and not torch's
    stack: ``name-version[-build]-python-abi-platform.whl``, each tag possibly dotted (PEP 427)."""
    parts = wheel.removesuffix(".whl").split("-")
    if len(parts) < 5 or _NEVER_SHIP.match(_norm(parts[0])):
        return False
    py, abi, plat = (set(t.split(".")) for t in parts[-3:])
    cp = "cp" + python_version.replace(".", "")
    minor = int(python_version.split(".")[1])
    python_ok = bool(py & {"py3", cp}) or "abi3" in abi and any(
        re.fullmatch(r"cp3(\d+)", t) and int(t[3:]) <= minor for t in py)
    abi_ok = bool(abi & {"none", "abi3", cp})
    legacy = {"manylinux1_x86_64", "manylinux2010_x86_64"}
    return python_ok and abi_ok and bool(plat & ({"any", *PLATFORMS} | legacy))


def copy_from_cache(reqs: list[str], dest: Path, python_version: str, cache: Path) -> list[str]:
    """A wheel of every requirement for the target, picked by pip from ``cache`` (offline); UserError naming every
    requirement the cache cannot satisfy."""
    if not cache.is_dir():
        raise UserError(f"{cache}: wheel cache folder not found")
    local = ["--no-index", "--find-links", str(cache), "--no-deps", *_target(python_version), "--quiet"]
    if _pip(["download", *local, "-d", str(dest), *reqs], isolated=True).returncode == 0:
        for whl in sorted(cache.glob("*.whl")):  # the dependencies: the rest of the cache that fits the target
            own = whl.name.startswith("arena_kd-")  # built fresh from this checkout below, never an old copy
            if fits_target(whl.name, python_version) and not own and not (dest / whl.name).exists():
                shutil.copy2(whl, dest / whl.name)
        return reqs
    missing = [r for r in reqs if _pip(["download", *local, "-d", str(dest), r], isolated=True).returncode != 0]
    raise UserError(f"{cache}: no wheel for {', '.join(missing) or 'the requirements'} (Python {python_version}, "
                    f"{PLATFORM}); add them (pip download ... -d {cache}) or pass --no-download to rely on the "
                    "Kaggle image's packages")


def build_own_wheel(code_dir: Path, dest: Path) -> Path:
    """``pip wheel --no-deps`` of the code folder, built from a copy (an in-tree build writes build/ into it)."""
    import importlib.util

    # with setuptools here the wheel builds offline; without it pip fetches setuptools (build isolation)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(code_dir, src)
        proc = _pip(["wheel", "--no-deps", *isolation, "-q", "-w", str(dest), str(src)])
    if proc.returncode != 0:
        raise UserError(f"{code_dir}: could not build the project's wheel ({_last_line(proc)})")
    (whl,) = sorted(dest.glob("arena_kd-*.whl"))
    return whl


Download = Callable[[list[str], Path, str], list[str]]


def build_wheels(dest: Path, code_dir: Path, *, python_version: str = KAGGLE_PYTHON, cache: Path | None = None,
                 download: Download | None = download_from_index,
                 own_wheel: Callable[[Path, Path], Path] = build_own_wheel) -> dict[str, object]:
    """Fill ``dest``: from the index where it answers (``download``; None = skip it), else from ``cache``, else only
    the project's own wheel when the download is skipped. Returns {source, python_version, requirements, wheels}."""
    dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements()
    source, note = "none", ""
    if download is not None:
        try:
            download(reqs, dest, python_version)
            source = "index"
        except IndexUnreachable as exc:
            if cache is None:
                raise UserError(f"could not download the wheels from the package index ({exc}); pass --wheel-cache "
                                "DIR (a folder of wheels) or --no-download") from None
            note = f"package index unreachable ({exc}); "
    if source == "none" and cache is not None:
        copy_from_cache(reqs, dest, python_version, cache)
        source = "cache"
    own = own_wheel(code_dir, dest)
    if source == "none":
        note += "only arena-kd's own wheel: the Kaggle image must already hold every requirement at its floor"
    elif source == "cache":
        note += f"from {cache}: the requirements and every other wheel there built for the target"
    return {"source": source, "python_version": python_version, "platform": PLATFORM, "requirements": reqs,
            "own_wheel": own.name, "wheels": sorted(p.name for p in dest.glob("*.whl")), "note": note}
