"""Launch ``arena-kd`` under ``accelerate launch`` on 2 CPU processes through tests/_dist_probe.py (shared by the
multi-process tests): the environment such a launch needs, and each rank's record of what it did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCEL = REPO / "configs" / "accelerate"
PROBE = REPO / "tests" / "_dist_probe.py"


def launch_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
           # the CPU path (gloo) also on GPU machines: two ranks cannot share one GPU under NCCL
           "CUDA_VISIBLE_DEVICES": ""}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_FSDP"):
        env.pop(k, None)
    return {**env, **extra}


def launch_probe(config: str, record: Path, cli_args: list[str], *, env: dict[str, str] | None = None,
                 expect_ok: bool = True, timeout: int = 420) -> tuple[subprocess.CompletedProcess, dict[int, dict]]:
    """``accelerate launch --config_file configs/accelerate/<config> tests/_dist_probe.py record <cli_args>``; returns
    the finished process and the records of the ranks that wrote one. ``timeout``: a hang fails the test."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCEL / config), str(PROBE),
           str(record), *cli_args]
    proc = subprocess.run(cmd, cwd=REPO, env=env or launch_env(), capture_output=True, text=True, timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = {r: json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)
               if (record / f"rank{r}.json").is_file()}
    return proc, records


def writes_under(rec: dict, root: Path) -> list[str]:
    """The paths a rank published under ``root``."""
    return [w for w in rec["writes"] if Path(w).is_relative_to(root.resolve())]


def balanced_folds_file(folder: Path, config: Path) -> Path:
    """A folds file splitting the smoke config's 48 rows 24/24: 24 training rows = 3 global batches of 8, so no
    rank ever gets a padded (duplicated-row) batch and data parallel must match one process exactly."""
    import pandas as pd

    from arena_kd.common.config import load_config
    from arena_kd.kfold.training_data import load_training_data

    ids = load_training_data(load_config(config, [f"workdir={folder / 'wd'}"])).frame["id"].astype(str).tolist()
    path = folder / "folds24.csv"
    pd.DataFrame({"id": ids, "fold": [i % 2 for i in range(len(ids))]}).to_csv(path, index=False)
    return path
