"""Run every benchmark under benchmarks/ and collect their printed figures into benchmarks/RESULTS.md.

Each benchmark is a standalone script that prints its figures (nothing is asserted). This runner
executes them one after the other (they compete for the same 2 cores otherwise), captures stdout,
adds the demo's per-stage wall time and peak memory (from runs/demo/report.json when `make all` has
run) and any recorded GPU figures (benchmarks/gpu_results*.json), and writes RESULTS.md atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arena_kd.common.io import atomic_write_text  # noqa: E402

# (script, extra args) in the order they run; gpu_throughput exits cleanly without CUDA.
# render.py runs twice: with the tokenizers thread pool (as inference uses it) and single-threaded (as `make` sets it).
BENCHMARKS = [
    ("render.py", ["TOKENIZERS_PARALLELISM=true"]),
    ("render.py", []),
    ("features.py", []),
    ("padding.py", []),
    ("submission_budget.py", []),
    ("cpu_throughput.py", []),
    ("gpu_throughput.py", []),
]


def _run(script: str, args: list[str]) -> tuple[str, float, int]:
    """Run one script; NAME=VALUE items in ``args`` are environment overrides, the rest are arguments."""
    env_over = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    args = [a for a in args if not ("=" in a and not a.startswith("-"))]
    path = ROOT / "benchmarks" / script
    if not path.is_file():
        return f"(missing: {script})", 0.0, -1
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(path), *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env_over},
    )
    out = proc.stdout.strip()
    if proc.returncode != 0:
        out += "\n(stderr tail)\n" + "\n".join(proc.stderr.strip().splitlines()[-15:])
    return out, time.perf_counter() - t0, proc.returncode


def _demo_section() -> str:
    rep = ROOT / "runs" / "demo" / "report.json"
    if not rep.is_file():
        return "No demo run recorded yet (`make all` writes runs/demo/report.json).\n"
    data = json.loads(rep.read_text())
    lines = ["| stage | wall time (s) | peak RSS (MiB) |", "|---|---|---|"]
    for st in data.get("stages", []):
        lines.append(f"| {st['stage']} | {st['seconds']:.1f} | {st.get('peak_rss_mib', float('nan')):.0f} |")
    return "\n".join(lines) + "\n"


def _gpu_section() -> str:
    """The GPU results files the planner reads (planner/calibration_data/, schema in planner/calibration.py)."""
    from arena_kd.planner.calibration import read_results, shipped_files

    files = shipped_files()
    if not files:
        return "No GPU run recorded yet: run `bash benchmarks/gpu_check.sh` on a GPU and commit its JSON.\n"
    parts = []
    for f in files:
        r = read_results(f)
        lines = [f"### {f.name}: {r.card}, {r.date}\n",
                 "| kind | precision | tokens | tokens/s (full depth) | peak GiB (full depth) |",
                 "|---|---|---|---|---|"]
        for rec in r.records:
            peak = f"{rec.peak_gib_full:.1f}" if rec.peak_gib_full is not None else "n/a"
            lines.append(f"| {rec.kind} | {rec.precision} | {rec.seq_len} | {rec.tokens_per_s_full:,.0f} | {peak} |")
        lines += [f"- skipped {s['what']}: {s['why']}" for s in r.skipped]
        lines += [f"- {s['name']}: {s['status']} ({s['seconds']} s)" for s in r.steps]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _kept_section(report, title: str, command: str) -> str:
    """A section as its own benchmark last wrote it (``report``: its report module, with BEGIN, END and SECTION_MD),
    between its markers; kept, since this runner does not rerun that benchmark."""
    if not report.SECTION_MD.is_file():
        return f"## {title}\n\nNot run yet: `{command}`.\n"
    return f"{report.BEGIN}\n{report.SECTION_MD.read_text()}\n{report.END}\n"


def _learning_curve_section() -> str:
    from benchmarks import learning_curve_report

    return _kept_section(learning_curve_report, "Learning curve", "make bench-learning")


def _linear_probe_section() -> str:
    from benchmarks import linear_probe_report

    return _kept_section(linear_probe_report, "Linear probe on frozen embeddings", "make bench-probe")


def main() -> None:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# Benchmark results\n\nRecorded {now} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(Python {platform.python_version()}). Figures are printed by the scripts, never asserted.\n"
    )
    sections = [header]
    for script, args in BENCHMARKS:
        print(f"== {' '.join([script, *args])}", flush=True)
        out, secs, rc = _run(script, args)
        print(out, flush=True)
        status = "" if rc == 0 else f" (exit {rc})"
        label = " ".join([script, *args])
        sections.append(f"## {label}{status} — {secs:.1f} s\n\n```\n{out}\n```\n")
    sections.append("## Demo pipeline (`make all`)\n\n" + _demo_section())
    sections.append("## GPU\n\n" + _gpu_section())
    sections.append(_learning_curve_section())
    sections.append(_linear_probe_section())
    atomic_write_text(ROOT / "benchmarks" / "RESULTS.md", "\n".join(sections))
    print(f"wrote {ROOT / 'benchmarks' / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
