"""Build the embedded real sample in data/sample/ from the shared source files (deterministic).

    python -m arena_kd.data.make_sample [--source /work/shared/data] [--out data/sample] [--seed 0] \\
        [--test-fraction 0.2]

Combines mtbench_human.csv and hh_harmless.csv (already in the Kaggle train.csv layout),
splits them grouped by prompt (the first user turn, as in data/folds.py) into ~80% train /
~20% test, and writes the Kaggle files: train.csv, test.csv (id,prompt,response_a,response_b),
sample_submission.csv (1/3 each), test_labels.csv (Kaggle train layout for the test ids), plus
arena_example.jsonl (a few rows of the Chatbot Arena conversation layout, from the train split).
train.csv and test_labels.csv carry one extra trailing column, ``source`` (``mtbench_human`` or ``hh_harmless``, the
source file's stem), so per-source results can be reported; test.csv has no source (as on Kaggle: the hidden test
rows carry none). Every input row is validated with data.readers first, so a broken source fails loudly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.io import atomic_write_csv, atomic_write_text
from arena_kd.common.keys import LABELS
from arena_kd.data.folds import prompt_groups
from arena_kd.data.readers import read_pairs

SOURCES = ("mtbench_human.csv", "hh_harmless.csv")
ARENA_SOURCE = "mtbench_human.arena.jsonl"
KAGGLE_TRAIN_COLUMNS = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", *LABELS]
KAGGLE_TEST_COLUMNS = ["id", "prompt", "response_a", "response_b"]
ARENA_EXAMPLE_ROWS = 40


def split_by_prompt(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """bool[n]: True for test rows. Whole prompt groups, shuffled by seed, taken until test_fraction of rows."""
    uniq, counts = np.unique(groups, return_counts=True)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    target = test_fraction * len(groups)
    chosen, total = [], 0
    for i in perm:
        if total >= target:
            break
        chosen.append(uniq[i])
        total += counts[i]
    return np.isin(groups, np.asarray(chosen, dtype=groups.dtype))


def build(source: Path, out: Path, seed: int = 0, test_fraction: float = 0.2) -> dict:
    raws, canon = [], []
    for name in SOURCES:
        path = source / name
        canon.append(read_pairs(path))  # validation: raises on a broken source
        raw_source = pd.read_csv(path, dtype=str, keep_default_na=False)[KAGGLE_TRAIN_COLUMNS]
        raws.append(raw_source.assign(source=Path(name).stem))  # the rows' origin, kept by data.readers
    raw = pd.concat(raws, ignore_index=True)
    df = pd.concat(canon, ignore_index=True)
    if raw["id"].duplicated().any():
        raise SystemExit(f"duplicate ids across {SOURCES}")
    is_test = split_by_prompt(prompt_groups(df), test_fraction, seed)
    train, test = raw[~is_test], raw[is_test]
    atomic_write_csv(out / "train.csv", train)  # Kaggle train layout + a trailing `source` column
    atomic_write_csv(out / "test.csv", test[KAGGLE_TEST_COLUMNS])
    atomic_write_csv(out / "test_labels.csv", test)
    sub = pd.DataFrame({"id": test["id"], **{c: 1 / 3 for c in LABELS}})
    atomic_write_csv(out / "sample_submission.csv", sub)

    # a small example of the arena conversation layout: rows whose prompt is in the train split
    arena_lines = []
    train_prompts = {json.dumps(json.loads(p)) for p in train["prompt"]}
    for line in (source / ARENA_SOURCE).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        users = [m["content"] for m in rec["conversation_a"] if m["role"] == "user"]
        if json.dumps(users) in train_prompts:
            arena_lines.append(line)
        if len(arena_lines) >= ARENA_EXAMPLE_ROWS:
            break
    atomic_write_text(out / "arena_example.jsonl", "\n".join(arena_lines) + "\n")
    return {"train": len(train), "test": len(test), "arena_example": len(arena_lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="/work/shared/data", help="folder with the shared source files")
    ap.add_argument("--out", default=str(Path(__file__).parent / "sample"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    a = ap.parse_args()
    print(build(Path(a.source), Path(a.out), a.seed, a.test_fraction))


if __name__ == "__main__":
    main()
