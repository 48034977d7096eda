#!/usr/bin/env python
"""Kaggle entry point: one notebook line writes submission.csv, offline, on the 2x T4 machine.

    !python /kaggle/input/arena-kd-code/kaggle/predict.py \\
        --artifacts /kaggle/input/arena-kd-artifacts \\
        --test /kaggle/input/lmsys-chatbot-arena/test.csv --out submission.csv

What it does, in order:
1. with the standard library alone (nothing installed yet; of the repository only its standard-library modules
   ``arena_kd.common.keys`` and ``arena_kd.data.text``), writes a valid fallback ``submission.csv``: the class
   prior of the competition's train.csv with A and B pooled (uniform without it), in sample_submission.csv's id
   order — from here on a scorable file exists;
2. installs from the wheels dataset every runtime dependency of ``pyproject.toml`` that is missing or
   below its floor: ``pip install --no-index --find-links <wheels> ...`` — never torch (the image's CUDA
   build stays); a wheel that is missing or fails is logged and the run goes on;
3. puts the repository (the folder above this file) first on sys.path, sets HF_HUB_OFFLINE=1, loads the
   config saved with the artifacts, points it at the artifacts (workdir) and the test file, and calls
   ``submission.run.run_submission`` — which replaces the fallback with better answers, atomically.
Any exception after step 1 ends in one ``error:`` line and exit 0: the file on disk is the last valid
answer (the notebook cell never throws). Exit 2, with one line, only when no valid file could be written
(no test file, no ``id`` column, an unwritable output).
See kaggle/README.md for exporting and uploading the artifacts.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.metadata as md
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# standard library only (step 1 runs before anything is installed): class order, the readers' decoding and id column
from arena_kd.common.keys import LABELS  # noqa: E402
from arena_kd.data.text import csv_header, raise_csv_field_limit, read_id_column  # noqa: E402

DEFAULT_WHEELS = ("/kaggle/input/arena-kd-wheels",)
CONFIG_CANDIDATES = ("config.yaml", "config.resolved.yaml", "student/export/config.resolved.yaml",
                     "stacking/config.resolved.yaml")
NEVER_INSTALL = {"torch"}  # the Kaggle image's CUDA build must not be replaced
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*(?:\[[^\]]*\])?\s*(?:(>=|~=|==|>)\s*([0-9][0-9.]*))?")


def say(msg: str) -> None:
    print(f"[predict] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- 1. the stdlib fallback


def prior_from_train(train: Path | None) -> tuple[list[float], str]:
    """Label frequencies of a Kaggle train.csv with A and B pooled, +1 smoothed (as submission.fallback.class_prior),
    or uniform when it is absent or unreadable."""
    if train is None or not train.is_file():
        return [1 / 3] * 3, "uniform (no train.csv)"
    try:
        raise_csv_field_limit()
        counts = [0, 0, 0]
        with open(train, encoding="utf-8", errors="replace", newline="") as fh:
            rows = csv.reader(fh, strict=False)
            header = csv_header(next(rows, []))
            cols = [header.index(c) for c in LABELS]
            for r in rows:
                try:
                    bits = [float(r[c]) for c in cols]
                except (ValueError, IndexError):
                    continue
                if sorted(bits) == [0.0, 0.0, 1.0]:
                    counts[bits.index(1.0)] += 1
        if not sum(counts):
            return [1 / 3] * 3, f"uniform ({train} has no labels)"
        ab = (counts[0] + counts[1]) / 2
        p = [ab + 1, ab + 1, counts[2] + 1]
        return [x / sum(p) for x in p], f"class prior of {train} ({sum(counts)} labels, A/B pooled)"
    except Exception as exc:  # noqa: BLE001
        return [1 / 3] * 3, f"uniform ({train} unreadable: {type(exc).__name__})"


def write_fallback(test: Path, out: Path, train: Path | None = None, sample: Path | None = None) -> tuple[int, str]:
    """Write a valid submission (one prior row per id) with the standard library alone; returns (rows, source).

    Ids: sample_submission.csv's when it is readable (its order is the one scored), else the test file's.
    Written to a temporary file and renamed, so a crash never leaves half a file.
    """
    ids = None
    if sample is not None and sample.is_file():
        try:
            ids = read_id_column(sample)
        except Exception as exc:  # noqa: BLE001
            say(f"warning: {sample} unreadable ({type(exc).__name__}: {exc}); using the test file's ids")
    if ids is None:
        ids = read_id_column(test)
    prior, source = prior_from_train(train)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["id", *LABELS])
            row = [f"{p:.10g}" for p in prior]
            for i in ids:
                w.writerow([i, *row])
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(ids), source


# --------------------------------------------------------------------------- 2. packages


def _release(v: str) -> tuple[int, ...]:
    """Release segment of a version ('2.1.0+cu121' → (2, 1, 0); '1.0rc1' → (1, 0))."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", v)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def _parse_requirement(spec: str) -> tuple[str, str | None] | None:
    spec = spec.split(";")[0]  # environment markers: not evaluated, the floor still applies
    m = _REQUIREMENT.match(spec)
    if not m or m.group(1).lower() in NEVER_INSTALL:
        return None
    return m.group(1), m.group(3)


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[tuple[str, str | None]]:
    """(distribution, floor version or None) of every runtime dependency, torch excluded.

    Read from the shipped pyproject.toml (with a regex: Kaggle's Python 3.10 has no tomllib), else from the
    installed arena-kd's metadata; there is no second, hand-kept list.
    """
    specs: list[str] = []
    if pyproject.is_file():
        # the list's items are quoted strings (which may hold "]", e.g. extras) and comments
        block = re.search(r"^dependencies\s*=\s*\[((?:\s|#[^\n]*|\"[^\"]*\"|'[^']*'|,)*)\]",
                          pyproject.read_text(encoding="utf-8"), flags=re.M)
        if block:
            specs = [a or b for a, b in re.findall(r"\"([^\"]*)\"|'([^']*)'", re.sub(r"#[^\n]*", "", block.group(1)))]
    if not specs:
        try:
            specs = [r for r in (md.requires("arena-kd") or []) if "extra ==" not in r]
        except md.PackageNotFoundError:
            specs = []
    return [r for r in map(_parse_requirement, specs) if r is not None]


def missing_packages(reqs: list[tuple[str, str | None]]) -> list[str]:
    """Requirement strings for the packages that are absent or below their floor."""
    need = []
    for dist, minimum in reqs:
        try:
            have = md.version(dist)
        except md.PackageNotFoundError:
            need.append(f"{dist}>={minimum}" if minimum else dist)
            continue
        if minimum and _release(have) < _release(minimum):
            need.append(f"{dist}>={minimum}")
    return need


def install_from_wheels(need: list[str], wheels: Path | None) -> list[str]:
    """pip-install ``need`` from the wheels folder (all at once, else one by one); returns what is still missing.

    Never raises: a package that cannot be installed is logged, and the run goes on (the fallback file exists).
    """
    if not need:
        return []
    if wheels is None or not wheels.is_dir():
        say(f"warning: packages missing or below their floor ({', '.join(need)}) and no wheels folder "
            "(attach the wheels dataset or pass --wheels); see kaggle/README.md")
        return need
    say(f"installing from {wheels}: {' '.join(need)}")
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--quiet"]
    if subprocess.call([*base, *need]) != 0:
        for req in need:  # one missing wheel must not cost the others
            if subprocess.call([*base, req]) != 0:
                say(f"warning: pip could not install {req} from {wheels}")
    importlib.invalidate_caches()
    still = missing_packages([r for r in map(_parse_requirement, need) if r is not None])
    if still:
        say(f"warning: still missing or too old after installing: {', '.join(still)}")
    return still


# --------------------------------------------------------------------------- 3. the real run


def find_config(artifacts: Path, explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    for rel in CONFIG_CANDIDATES:
        if (artifacts / rel).is_file():
            return artifacts / rel
    raise FileNotFoundError(f"{artifacts}: no config found (looked for {', '.join(CONFIG_CANDIDATES)}); pass --config")


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
    p = argparse.ArgumentParser(
        description="Write submission.csv on Kaggle from exported arena-kd artifacts (offline).")
    p.add_argument("--artifacts",
                   help="Folder with student/export/ and stacking/ (the workdir, uploaded as a dataset).")
    p.add_argument("--test", help="Kaggle test.csv.")
    p.add_argument("--out", default="submission.csv", help="Output CSV (default ./submission.csv).")
    p.add_argument("--config", default=None, help="Config YAML; default: the one saved with the artifacts.")
    p.add_argument("--wheels", default=None,
                   help="Folder of wheels for missing packages; default /kaggle/input/arena-kd-wheels.")
    p.add_argument("--time-budget", default=None,
                   help="Wall-clock budget (e.g. 8h30m); default: the config's submission.time_budget.")
    p.add_argument("--set", action="append", default=[], help="Extra config override dotted.key=value (repeatable).")
    p.add_argument("--print-requirements", action="store_true",
                   help="Print the runtime requirements (for `pip download` into the wheels dataset) and exit.")
    args = p.parse_args(argv)
    if not args.print_requirements and (not args.artifacts or not args.test):
        p.error("--artifacts and --test are required")
    return args


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if type(exc).__name__ == "UserError" or isinstance(exc, (FileNotFoundError, SystemExit)) and msg:
        return msg.removeprefix("error: ")  # already one line naming the file
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def run(args: argparse.Namespace, artifacts: Path, test: Path) -> str:
    """Steps 2 and 3; returns the one-line summary. Raises whatever fails (main turns it into one line)."""
    wheels = Path(args.wheels) if args.wheels else next((Path(w) for w in DEFAULT_WHEELS if Path(w).is_dir()), None)
    try:
        install_from_wheels(missing_packages(requirements()), wheels)
    except Exception as exc:  # noqa: BLE001 - try the run with what is installed
        say(f"warning: package check failed ({_one_line(exc)}); going on with what is installed")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if str(REPO) in sys.path:
        sys.path.remove(str(REPO))
    sys.path.insert(0, str(REPO))
    if not artifacts.is_dir():
        raise FileNotFoundError(f"{artifacts}: artifacts folder not found")

    from arena_kd.common.config import load_config
    from arena_kd.submission.run import run_submission

    cfg = load_config(find_config(artifacts, args.config), build_overrides(artifacts, test) + list(args.set))
    result = run_submission(cfg, test=str(test), out=args.out, time_budget=args.time_budget)
    return f"{result.out}: {sum(result.counts.values())} rows in {result.seconds:.0f}s — {result.counts}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_requirements:
        print("\n".join(f"{d}>={v}" if v else d for d, v in requirements()))
        return 0
    started = time.time()
    artifacts, test, out = Path(args.artifacts), Path(args.test), Path(args.out)
    if not test.is_file():
        print(f"error: {test}: test file not found", file=sys.stderr)
        return 2
    fallback_ok = False
    try:
        n, source = write_fallback(test, out, train=test.with_name("train.csv"),
                                   sample=test.with_name("sample_submission.csv"))
        fallback_ok = True
        say(f"fallback {out} written first ({n} rows, {source})")
    except Exception as exc:  # noqa: BLE001 - the real run may still manage (it reads the file more tolerantly)
        say(f"warning: could not write the fallback file ({_one_line(exc)})")
    try:
        say(run(args, artifacts, test))
        return 0
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: the notebook cell must not throw
        written = out.is_file() and (fallback_ok or out.stat().st_mtime >= started)
        if written:
            print(f"error: {_one_line(exc)} — {out} holds the last valid answer", file=sys.stderr, flush=True)
            return 0
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
