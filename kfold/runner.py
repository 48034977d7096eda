"""Resumable k-fold bookkeeping shared by the teacher and student stages.

One fold = one resume unit: ``<stage_dir>/fold<k>.parquet`` (+ ``fold<k>.meta.json``) written
atomically once the fold's held-out predictions exist. On rerun a fold file whose recorded
hashes (config, data, folds) match is skipped; a fold file with different hashes is refused
(never mixed) unless ``force``. ``ARENA_KD_FAIL_AFTER_FOLDS=N`` makes the process raise right
after it has written N fold files (fault injection for the resume tests).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from arena_kd.common.errors import UserError
from arena_kd.common.io import read_keyed_table, sidecar_path, write_keyed_table
from arena_kd.common.keys import LOGIT_COLUMNS
from arena_kd.common.metrics import accuracy, log_loss, softmax
from arena_kd.kfold.dist import main_write

FAULT_ENV = "ARENA_KD_FAIL_AFTER_FOLDS"
# the two test-time-augmentation passes behind the averaged LOGIT_COLUMNS: as given, and with A/B swapped (swapped back)
ORIG_COLUMNS = tuple(f"orig_{c}" for c in LOGIT_COLUMNS)
SWAP_COLUMNS = tuple(f"swap_{c}" for c in LOGIT_COLUMNS)


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook (tests only)."""


class FaultInjector:
    """Counts fold files written in one run; raises after ``ARENA_KD_FAIL_AFTER_FOLDS`` of them."""

    def __init__(self, limit: int | None = None):
        if limit is None:
            raw = os.environ.get(FAULT_ENV, "").strip()
            limit = int(raw) if raw else None
        self.limit = limit
        self.written = 0

    def fold_written(self) -> None:
        self.written += 1
        if self.limit is not None and self.written >= self.limit:
            raise InjectedFault(f"{FAULT_ENV}={self.limit}: stopping after {self.written} fold file(s)")


def fold_path(stage_dir: str | Path, fold: int) -> Path:
    return Path(stage_dir) / f"fold{fold}.parquet"


def check_hashes(path: str | Path, meta: dict[str, Any], hashes: dict[str, str]) -> None:
    """Raise a UserError naming the first hash that differs between ``meta['hashes']`` and ``hashes``."""
    old = meta.get("hashes", {})
    for key, new in hashes.items():
        if old.get(key) != new:
            raise UserError(
                f"{path}: {key} hash differs from the run that wrote it (was {old.get(key)}, now {new}); "
                "refusing to mix outputs — rerun with --force to redo"
            )


def fold_is_done(path: Path, hashes: dict[str, str], force: bool, log: Callable[[str], None] = print) -> bool:
    """True when the fold file exists and was written with the same hashes; refuses mismatches unless force.

    A fold file or sidecar that cannot be read (a killed copy, a full disk) is not done: one line says so
    and the fold is redone (its outputs are replaced atomically).
    """
    if not path.is_file() or force:
        return False
    if not sidecar_path(path).is_file():
        return False  # an orphan Parquet without its sidecar: redo the fold
    try:
        _, meta = read_keyed_table(path)
        if not isinstance(meta, dict):
            raise ValueError(f"sidecar holds a {type(meta).__name__}, not an object")
    except Exception as exc:  # noqa: BLE001 - pyarrow / json raise many types for a truncated file
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        log(f"{path}: unreadable fold file or sidecar ({type(exc).__name__}: {detail}); redoing the fold")
        return False
    check_hashes(path, meta, hashes)
    return True


def model_meta(model_cfg, train_cfg, predict_cfg, render_cfg) -> dict[str, Any]:
    """What an OOF sidecar records about the model that produced it (shared by teachers and student)."""
    return {
        "backbone": model_cfg.backbone,
        "revision": model_cfg.revision,
        "gguf_file": model_cfg.gguf_file,
        "quantization": model_cfg.quantization,
        "train_max_length": train_cfg.max_length or render_cfg.max_length,
        "predict_max_length": predict_cfg.max_length or render_cfg.max_length,
        "tta": predict_cfg.tta,
    }


def fold_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Log loss + accuracy of [n,3] logits against int labels."""
    p = softmax(logits)
    return {"log_loss": log_loss(labels, p), "accuracy": accuracy(labels, p), "rows": int(len(labels))}


def tta_frame(ids: pd.Series, fold: int, tta: dict[str, np.ndarray]) -> pd.DataFrame:
    """id, fold, logit_* (avg), orig_logit_*, swap_logit_* from a predict_tta-style dict of [n,3] arrays."""
    out = pd.DataFrame({"id": ids.astype(str).to_numpy(), "fold": int(fold)})
    for cols, key in ((LOGIT_COLUMNS, "avg"), (ORIG_COLUMNS, "orig"), (SWAP_COLUMNS, "swap")):
        arr = np.asarray(tta[key], dtype=np.float32)
        for j, c in enumerate(cols):
            out[c] = arr[:, j]
    return out


def mean_fold_logprobs(paths: list[Path], ids: pd.Series, hashes: dict[str, str],
                       groups: tuple[tuple[str, ...], ...] = (LOGIT_COLUMNS,)) -> pd.DataFrame:
    """id + every column of ``groups`` (class-order triples) for ``ids`` in that order: the mean over the fold files
    ``paths`` (each hash-checked) of the log-softmax of each triple, float32. How the fold models of a stage predict
    rows none of them trained on (the teachers' data.extra, the student's held-out rows)."""
    from arena_kd.common.metrics import mean_log_softmax

    parts: dict[tuple[str, ...], list[np.ndarray]] = {g: [] for g in groups}
    for path in paths:
        df, meta = read_keyed_table(path)
        check_hashes(path, meta, hashes)
        df = pd.DataFrame({"id": ids.astype(str).to_numpy()}).merge(df, on="id", how="left")
        for g in groups:
            parts[g].append(df[list(g)].to_numpy(dtype=np.float64))
    out = pd.DataFrame({"id": ids.astype(str).to_numpy()})
    for g in groups:
        mean = mean_log_softmax(parts[g])
        for j, c in enumerate(g):
            out[c] = mean[:, j]
    return out


def remove_checkpoints(out_dir: str | Path) -> None:
    """Delete HF Trainer checkpoints (``checkpoints/``, ``checkpoint-*``) under ``out_dir``.

    Keeps the disk small; the adapters stay.
    """
    for ck in [*Path(out_dir).glob("checkpoint-*"), *Path(out_dir).glob("checkpoints")]:
        if ck.is_dir():
            shutil.rmtree(ck, ignore_errors=True)


def _write_fold(path: Path, df: pd.DataFrame, meta: dict[str, Any], fold_dir: Path) -> None:
    write_keyed_table(path, df, meta)
    remove_checkpoints(fold_dir)


FoldFn = Callable[[int, pd.DataFrame, pd.DataFrame, Path], tuple[dict[str, np.ndarray], dict[str, Any]]]


def run_folds(
    frame: pd.DataFrame,
    stage_dir: Path,
    hashes: dict[str, str],
    fit_predict: FoldFn,
    *,
    force: bool,
    fault: FaultInjector,
    label: str,
    log: Callable[[str], None] = print,
) -> list[pd.DataFrame]:
    """For each fold in ``frame['fold']``: skip if done, else ``fit_predict(k, train, valid, fold_dir)`` → fold file.

    ``fit_predict`` returns (tta dict of [n_valid,3] arrays in ``valid`` order, extra meta). Returns the fold frames.
    """
    labels_all = frame["label"].astype(int).to_numpy()
    out = []
    for k in sorted(int(f) for f in frame["fold"].unique()):
        path = fold_path(stage_dir, k)
        if fold_is_done(path, hashes, force, log):
            df, meta = read_keyed_table(path)
            log(f"[{label}] fold {k}: done earlier ({path}), skipped — log loss {meta['metrics']['log_loss']:.4f}")
            out.append(df)
            continue
        mask = frame["fold"].to_numpy() == k
        train_df = frame.loc[~mask].reset_index(drop=True)
        valid_df = frame.loc[mask].reset_index(drop=True)
        fold_dir = stage_dir / f"fold{k}"
        if force:  # the trainer's own resume must not pick up a stale adapter/checkpoint (every rank: a barrier)
            main_write(shutil.rmtree, fold_dir, ignore_errors=True)
        log(f"[{label}] fold {k}: training on {len(train_df)} rows, predicting {len(valid_df)}")
        t0 = time.time()
        tta, extra = fit_predict(k, train_df, valid_df, fold_dir)
        wall = time.time() - t0
        df = tta_frame(valid_df["id"], k, tta)
        metrics = fold_metrics(labels_all[mask], df[list(LOGIT_COLUMNS)].to_numpy())
        meta = {"fold": k, "hashes": hashes, "metrics": metrics, "wall_time_s": round(wall, 3), **extra}
        main_write(_write_fold, path, df, meta, fold_dir)
        log(f"[{label}] fold {k}: log loss {metrics['log_loss']:.4f}, accuracy {metrics['accuracy']:.3f} ({wall:.1f}s)")
        out.append(df)
        fault.fold_written()
    return out
