"""Unlabelled pairs from the dev data, for the student's extra rows (``student.extra_pairs``): the answers of two
models to the same question and turn that no human compared.

Every labelled MT-Bench-style row shows two models' answers (all turns so far) to one prompt (all user turns so far).
Collecting every model's answer per prompt gives up to C(m, 2) pairs per prompt; the ones a labelled row already
compares (the same two models on the same prompt, either orientation) and any exact copy of a labelled pair are left
out, and so is every prompt of an excluded file's question (the test split: grouped by the first user turn, as
data.folds groups). Rows without model names (HH-RLHF: 'unknown') give nothing. Which answer is A is drawn with
``seed``; the output is the Kaggle pair layout without winner columns (what data.readers reads as unlabelled rows).

    arena-kd make-pairs --from data/sample/train.csv --from ../shared/data/mtbench_human.arena.jsonl \\
        --exclude data/sample/test.csv --out runs/pairs/mtbench_unlabelled.csv
"""

from __future__ import annotations

import hashlib
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.data.folds import prompt_groups

PAIR_COLUMNS = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", "source"]
NO_MODEL = {"", "unknown"}


def _turns_json(turns) -> str:
    return json.dumps([str(t) for t in turns], ensure_ascii=False)


def pair_keys(df: pd.DataFrame) -> np.ndarray:
    """str[n]: the identity of each row's pair whatever its orientation (prompt turns + the two answers, sorted)."""
    keys = []
    for p, a, b in zip(df["prompt"], df["response_a"], df["response_b"]):
        sides = sorted((_turns_json(a), _turns_json(b)))
        keys.append(hashlib.blake2b("\x1f".join([_turns_json(p), *sides]).encode(), digest_size=12).hexdigest())
    return np.asarray(keys, dtype=object)


def _compared(df: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(prompt, model, model) with the models sorted, for every row that names both models."""
    out = set()
    for p, ma, mb in zip(df["prompt"], df["model_a"], df["model_b"]):
        if str(ma) not in NO_MODEL and str(mb) not in NO_MODEL:
            out.add((_turns_json(p), *sorted((str(ma), str(mb)))))
    return out


def answers_by_prompt(frames: list[pd.DataFrame]) -> dict[str, dict[str, tuple[list[str], str]]]:
    """prompt (JSON turns) -> model -> (its answer turns, the row's source); the first answer seen wins (frames in
    order, rows sorted by id: deterministic)."""
    out: dict[str, dict[str, tuple[list[str], str]]] = {}
    for df in frames:
        df = df.sort_values("id", kind="stable")
        for p, src, *sides in zip(df["prompt"], df["source"], df["model_a"], df["response_a"], df["model_b"],
                                  df["response_b"]):
            for model, answer in (sides[:2], sides[2:]):
                if str(model) not in NO_MODEL and len(answer) == len(p):
                    out.setdefault(_turns_json(p), {}).setdefault(str(model), ([str(t) for t in answer], str(src)))
    return out


def generate_pairs(answers: list[pd.DataFrame], labelled: list[pd.DataFrame], exclude: list[pd.DataFrame], *,
                   seed: int = 0, max_pairs: int | None = None) -> pd.DataFrame:
    """Unlabelled pairs (PAIR_COLUMNS; prompt/answers as turn lists) from the answers in ``answers`` (canonical
    frames), none on a question of ``exclude``, none comparing two models a row of ``labelled`` (or of ``answers``)
    compares on that prompt, none an exact copy of a labelled pair. Deterministic for a seed; ``max_pairs``: a seeded
    subset."""
    known = [*labelled, *answers]
    compared = set().union(*(_compared(df) for df in known))
    labelled_keys = set().union(*(set(pair_keys(df)) for df in known))
    banned = set().union(*(set(prompt_groups(df).tolist()) for df in exclude))
    rows = []
    for prompt, by_model in sorted(answers_by_prompt(answers).items()):
        turns = json.loads(prompt)
        if int(prompt_groups(pd.DataFrame({"prompt": [turns]}))[0]) in banned:
            continue
        for m1, m2 in combinations(sorted(by_model), 2):
            if (prompt, m1, m2) in compared:
                continue
            rows.append({"model_a": m1, "model_b": m2, "prompt": turns, "response_a": by_model[m1][0],
                         "response_b": by_model[m2][0], "source": by_model[m1][1]})
    out = pd.DataFrame(rows, columns=PAIR_COLUMNS[1:])
    if out.empty:
        return out.assign(id=pd.Series(dtype=str))[PAIR_COLUMNS]
    keys = pd.Series(pair_keys(out))  # two models can give the same text: one pair per distinct pair of answers
    out = out[~(keys.isin(labelled_keys) | keys.duplicated()).to_numpy()].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if max_pairs is not None and max_pairs < len(out):
        out = out.iloc[np.sort(rng.permutation(len(out))[:max_pairs])].reset_index(drop=True)
    flip = rng.random(len(out)) < 0.5  # which model is shown as A
    for x, y in (("model_a", "model_b"), ("response_a", "response_b")):
        out.loc[flip, [x, y]] = out.loc[flip, [y, x]].to_numpy()
    ids = [hashlib.blake2b(f"{p}|{a}|{b}".encode(), digest_size=6).hexdigest()
           for p, a, b in zip(map(_turns_json, out["prompt"]), out["model_a"], out["model_b"])]
    out.insert(0, "id", [f"unl-{i}" for i in ids])
    return out[PAIR_COLUMNS]


def write_pairs(pairs: pd.DataFrame, path: str | Path) -> Path:
    """The pairs as a Kaggle-layout CSV (turn lists JSON-encoded, no winner columns), written atomically."""
    from arena_kd.common.io import atomic_write_csv

    out = pairs.copy()
    for c in ("prompt", "response_a", "response_b"):
        out[c] = out[c].map(_turns_json)
    atomic_write_csv(Path(path), out)
    return Path(path)


def make_pairs(sources: list[str], exclude: list[str], out: str, *, labelled: list[str] | None = None, seed: int = 0,
               max_pairs: int | None = None) -> dict:
    """Read the files (data.readers: any supported layout), generate, write ``out``; returns counts."""
    from arena_kd.data.readers import read_pairs

    answers = [read_pairs(p, seed=seed) for p in sources]
    known = [read_pairs(p, seed=seed) for p in labelled or []]
    excluded = [read_pairs(p, seed=seed) for p in exclude]
    pairs = generate_pairs(answers, known, excluded, seed=seed, max_pairs=max_pairs)
    write_pairs(pairs, out)
    return {"pairs": int(len(pairs)), "prompts": int(pairs["prompt"].map(_turns_json).nunique()) if len(pairs) else 0,
            "out": str(out)}
