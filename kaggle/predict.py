#!/usr/bin/env python
"""Kaggle entry point: one notebook line writes submission.csv, offline, on the 2x T4 machine.

    !python /kaggle/input/arena-kd-code/kaggle/predict.py \\
        --artifacts /kaggle/input/arena-kd-artifacts \\
        --test /kaggle/input/lmsys-chatbot-arena/test.csv --out submission.csv

What it does, in order (standard library only until step 3):
1. installs the packages this code needs and the image lacks (or has too old), from the wheels dataset:
   ``pip install --no-index --find-links <wheels> ...`` — never torch (the image's CUDA build stays);
2. puts the repository (the folder above this file) first on sys.path and sets HF_HUB_OFFLINE=1;
3. loads the config saved with the artifacts, points it at the artifacts (workdir) and the test file,
   and calls ``submission.run.run_submission`` — which always writes a valid file inside the budget.
Exit code 2 with one line on a user error (missing file, bad config), like the `arena-kd` CLI.
See kaggle/README.md for exporting and uploading the artifacts.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WHEELS = ("/kaggle/input/arena-kd-wheels",)
CONFIG_CANDIDATES = ("config.yaml", "config.resolved.yaml", "student/export/config.resolved.yaml", "stacking/config.resolved.yaml")
NEVER_INSTALL = {"torch"}  # the Kaggle image's CUDA build must not be replaced
_DIST_NAME = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][0-9.]*))?")


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[tuple[str, str | None]]:
    """(distribution, minimum version or None) for every runtime dependency of the repository.

    Read with a regex rather than tomllib, which Kaggle's Python 3.10 image lacks.
    """
    text = pyproject.read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, flags=re.S | re.M)
    if block is None:
        raise SystemExit(f"error: {pyproject}: no [project] dependencies list")
    out = []
    for d in re.findall(r"[\"']([^\"']+)[\"']", block.group(1)):
        m = _DIST_NAME.match(d)
        if m and m.group(1).lower() not in NEVER_INSTALL:
            out.append((m.group(1), m.group(2)))
    return out


def missing_packages(reqs: list[tuple[str, str | None]]) -> list[str]:
    """Requirement strings for the packages that are absent or older than required."""
    need = []
    for dist, minimum in reqs:
        try:
            have = md.version(dist)
        except md.PackageNotFoundError:
            need.append(f"{dist}>={minimum}" if minimum else dist)
            continue
        if minimum and _version_tuple(have) < _version_tuple(minimum):
            need.append(f"{dist}>={minimum}")
    return need


def install_from_wheels(need: list[str], wheels: Path | None) -> None:
    if not need:
        return
    if wheels is None or not wheels.is_dir():
        raise SystemExit(f"error: packages missing ({', '.join(need)}) and no wheels folder "
                         f"(attach the wheels dataset or pass --wheels); see kaggle/README.md")
    print(f"[predict] installing from {wheels}: {' '.join(need)}", flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--quiet", *need]
    rc = subprocess.call(cmd)
    if rc != 0:
        raise SystemExit(f"error: pip install from {wheels} failed (exit {rc}): {' '.join(need)}")


def find_config(artifacts: Path, explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    for rel in CONFIG_CANDIDATES:
        if (artifacts / rel).is_file():
            return artifacts / rel
    raise SystemExit(f"error: {artifacts}: no config found (looked for {', '.join(CONFIG_CANDIDATES)}); pass --config")


def build_overrides(artifacts: Path, test: Path) -> list[str]:
    """Point the saved config at the artifacts (workdir) and at the Kaggle input folder."""
    sets = [f"workdir={artifacts}", f"data.test={test}", "submission.out=null"]
    sample = test.with_name("sample_submission.csv")
    sets.append(f"data.sample_submission={sample if sample.is_file() else 'null'}")
    train = test.with_name("train.csv")
    if train.is_file():  # only used for the class-prior fallback
        sets.append(f"data.train={train}")
    return sets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Write submission.csv on Kaggle from exported arena-kd artifacts (offline).")
    p.add_argument("--artifacts", required=True, help="Folder with student/export/ and stacking/ (the workdir, uploaded as a dataset).")
    p.add_argument("--test", required=True, help="Kaggle test.csv.")
    p.add_argument("--out", default="submission.csv", help="Output CSV (default ./submission.csv).")
    p.add_argument("--config", default=None, help="Config YAML; default: the one saved with the artifacts.")
    p.add_argument("--wheels", default=None, help="Folder of wheels for missing packages; default /kaggle/input/arena-kd-wheels.")
    p.add_argument("--time-budget", default=None, help="Wall-clock budget (e.g. 8h30m); default: the config's submission.time_budget.")
    p.add_argument("--set", action="append", default=[], help="Extra config override dotted.key=value (repeatable).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    artifacts, test = Path(args.artifacts), Path(args.test)
    if not artifacts.is_dir():
        print(f"error: {artifacts}: artifacts folder not found", file=sys.stderr)
        return 2
    if not test.is_file():
        print(f"error: {test}: test file not found", file=sys.stderr)
        return 2
    wheels = Path(args.wheels) if args.wheels else next((Path(w) for w in DEFAULT_WHEELS if Path(w).is_dir()), None)
    install_from_wheels(missing_packages(requirements()), wheels)

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO))

    from arena_kd.config import load_config
    from arena_kd.errors import UserError
    from submission.run import run_submission

    try:
        cfg = load_config(find_config(artifacts, args.config), build_overrides(artifacts, test) + list(args.set))
        result = run_submission(cfg, test=str(test), out=args.out, time_budget=args.time_budget)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[predict] {result.out}: {sum(result.counts.values())} rows in {result.seconds:.0f}s — {result.counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
