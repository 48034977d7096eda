"""The GPU check's rehearsal: the smoke pipeline on CUDA (fp16 autocast, paged 8-bit AdamW), then the GPU tests.

Each step runs in a subprocess from the repository root; what cannot run (no CUDA, a package missing) is skipped and
named, so the results file says what was not rehearsed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REHEARSAL_MODULES = ("transformers", "peft", "accelerate", "bitsandbytes", "typer", "pydantic", "yaml", "pandas",
                     "pyarrow", "lightgbm", "scipy", "sklearn")
"""What the project's pipeline imports (pyproject dependencies): checked before the rehearsal so a gap is named."""


def rehearsal(dev: torch.device, timeout_s: int) -> list[dict]:
    """The smoke pipeline on CUDA (fp16 autocast, paged 8-bit AdamW, fp16 export), then the GPU-marked tests."""
    if dev.type != "cuda":
        why = "dry run on CPU: the rehearsal needs CUDA (its CPU path is tests/test_pipeline.py)"
        return [{"name": n, "status": "skipped", "seconds": 0.0, "detail": why}
                for n in ("rehearsal: smoke pipeline on CUDA", "rehearsal: pytest -m gpu")]
    work = tempfile.mkdtemp(prefix="gpu_check_")
    sets = ["workdir=" + work, "student.model.dtype=fp16", "student.train.optim=paged_adamw_8bit",
            "student.export_dtype=fp16", "teachers.models.0.train.optim=paged_adamw_8bit",
            "teachers.models.0.model.dtype=fp16"]
    set_args = sum((["--set", s] for s in sets), [])
    cmds = [("rehearsal: smoke pipeline on CUDA", REHEARSAL_MODULES,
             [sys.executable, "-m", "arena_kd.cli", "all", "--config", "configs/smoke.yaml", *set_args]),
            ("rehearsal: pytest -m gpu", (*REHEARSAL_MODULES, "pytest"),
             [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"])]
    steps = []
    for name, needs, cmd in cmds:
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            detail = f"not installed here: {', '.join(missing)} (bring wheels: gpu_check.sh --fetch-wheels)"
            steps.append({"name": name, "status": "skipped", "seconds": 0.0, "detail": detail})
            print(f"  {name}: skipped ({steps[-1]['detail']})", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
            tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
            status = "ok" if p.returncode == 0 else "failed"
            detail = f"exit {p.returncode}: " + " | ".join(tail)
        except subprocess.TimeoutExpired:
            status, detail = "failed", f"timed out after {timeout_s}s"
        seconds = round(time.perf_counter() - t0, 1)
        steps.append({"name": name, "status": status, "seconds": seconds, "detail": detail[:600]})
        print(f"  {name}: {status} ({steps[-1]['seconds']}s) {detail[:200]}", flush=True)
    return steps
