"""`arena-kd stack`: features → cross-validated LightGBM stackers → temperature → report.

Outputs under ``<workdir>/stacking/``:
  tfidf.json, tfidf_idf.parquet        fitted TF-IDF spaces (test-time features use them)
  features.parquet (+meta)             the training feature table (id + features)
  stacker_fold<k>.txt, stacker_full.txt          student-logit stacker (fold models + the full model used to predict)
  features_only_fold<k>.txt, features_only_full.txt   the fallback without the student
  temperature.json                     fitted temperatures per model
  features.json                        feature list of each model
  oof.parquet (+meta)                  id, fold, label, <model>_raw_{a,b,tie}, <model>_{a,b,tie} (calibrated)
  stacker.json                         manifest: feature lists, model files, temperatures, input hash (written last)
  report.md, *.png, config.resolved.yaml

Without ``<workdir>/student/oof.parquet`` only the features-only stacker is trained (and said so).
Resumable: when ``stacker.json`` exists with the same input hash (config, data, folds, student OOF) and every
file it names exists, the stage only reprints the table; ``force=True`` retrains.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.config import PipelineConfig, write_resolved
from arena_kd.errors import UserError
from arena_kd.io import atomic_write_json, file_hash, read_keyed_table, write_keyed_table
from stacking.calibration import TemperatureFit, apply_temperature, fit_temperature
from stacking.features import compute_features, fit_similarity, is_student_column, student_probs
from stacking.model import gain_importance, save_booster, train_cv, train_full
from stacking.predict import MANIFEST, STUDENT_ONLY
from stacking.report import format_table, prob_columns, write_report

FORMAT_VERSION = 1
LOGITS = ("logit_a", "logit_b", "logit_tie")
ORIG = ("orig_logit_a", "orig_logit_b", "orig_logit_tie")
SWAP = ("swap_logit_a", "swap_logit_b", "swap_logit_tie")


def stack_dir(cfg: PipelineConfig) -> Path:
    return cfg.workdir_path / "stacking"


def student_oof_path(cfg: PipelineConfig) -> Path:
    return cfg.workdir_path / "student" / "oof.parquet"


def load_student_oof(path: Path, ids: pd.Series) -> tuple[dict, np.ndarray]:
    """Student logits aligned to ``ids``: ({"orig": [m,3], "swap": [m,3] | None}, bool[n] mask of ids present)."""
    sdf, _ = read_keyed_table(path)
    cols = set(sdf.columns)
    if not set(LOGITS) <= cols and not set(ORIG) <= cols:
        raise UserError(f"{path}: student OOF needs columns {', '.join(ORIG)} (or {', '.join(LOGITS)})")
    m = ids.to_frame("id").merge(sdf, on="id", how="left", validate="one_to_one")
    orig_cols = ORIG if set(ORIG) <= cols else LOGITS
    orig = m[list(orig_cols)].to_numpy(dtype=np.float64)
    present = np.isfinite(orig).all(axis=1)
    swap = m[list(SWAP)].to_numpy(dtype=np.float64) if set(SWAP) <= cols else None
    if swap is not None and not np.isfinite(swap[present]).all():
        bad = int(np.flatnonzero(present & ~np.isfinite(swap).all(axis=1))[0])
        raise UserError(f"{path}: id {ids.iloc[bad]!r}: non-finite swap logits")
    return {"orig": orig[present], "swap": None if swap is None else swap[present]}, present


def _input_hash(cfg: PipelineConfig, data_hash: str, folds_hash: str, student_hash: str | None) -> str:
    d = {"v": FORMAT_VERSION, "stacking": cfg.stacking.model_dump(mode="json"), "seed": cfg.seed,
         "data": data_hash, "folds": folds_hash, "student": student_hash}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _up_to_date(out: Path, input_hash: str) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if manifest.get("input_hash") != input_hash:
        return None
    needed = [out / f for f in manifest.get("files", [])]
    return manifest if all(p.is_file() for p in needed) else None


def _train_model(name: str, x: pd.DataFrame, y: np.ndarray, folds: np.ndarray, cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    """CV + full LightGBM model + temperature for one feature set; writes <name>_fold<k>.txt and <name>_full.txt."""
    for old in out.glob(f"{name}_fold*.txt"):
        old.unlink()
    cv = train_cv(x, y, folds, cfg.stacking, cfg.seed)
    files = [save_booster(b, out / f"{name}_fold{k}.txt", num_iteration=it).name for b, k, it in zip(cv.boosters, cv.fold_ids, cv.best_iterations)]
    full = train_full(x, y, cfg.stacking, cfg.seed, cv.full_rounds)
    files.append(save_booster(full, out / f"{name}_full.txt").name)
    temp = fit_temperature(cv.oof, y) if cfg.stacking.calibrate else _no_temperature(cv.oof, y)
    return {
        "spec": {"kind": "lightgbm", "features": list(x.columns), "model_file": f"{name}_full.txt", "fold_files": files[:-1],
                 "best_iterations": cv.best_iterations, "full_rounds": cv.full_rounds, "temperature": temp.temperature},
        "files": files,
        "oof_raw": cv.oof,
        "temperature": temp,
        "importance": gain_importance(full),
    }


def _no_temperature(probs: np.ndarray, y: np.ndarray) -> TemperatureFit:
    from arena_kd.metrics import log_loss

    ll = log_loss(y, probs)
    return TemperatureFit(1.0, ll, ll, len(y))


def run_stacking(cfg: PipelineConfig, force: bool = False) -> dict:
    """Train the stackers for ``cfg`` (see module doc); returns the manifest written to stacker.json."""
    from teachers.training_data import load_training_data

    t0 = time.time()
    out = stack_dir(cfg)
    data = load_training_data(cfg)
    frame = data.frame
    notes: list[str] = []
    spath = student_oof_path(cfg)
    student, student_hash = None, None
    if spath.is_file():
        student, present = load_student_oof(spath, frame["id"])
        student_hash = file_hash(spath)
        if not present.any():
            raise UserError(f"{spath}: no id in common with the training rows of {cfg.data.train}")
        if not present.all():
            notes.append(f"student OOF covers {int(present.sum())} of {len(frame)} training rows; the stackers use those rows")
            frame = frame[present].reset_index(drop=True)
    else:
        notes.append(f"no student OOF at {spath}: training the features-only stacker only")
    for n in notes:
        print(f"[stack] {n}")

    input_hash = _input_hash(cfg, data.data_hash, data.folds_hash, student_hash)
    if not force:
        manifest = _up_to_date(out, input_hash)
        if manifest is not None:
            print(f"[stack] {out / MANIFEST} is up to date (input hash {input_hash}); --force retrains")
            print(format_table(manifest.get("stages", [])))
            return manifest

    out.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, out)
    sc = cfg.stacking
    tfidf = fit_similarity(frame, n_features=sc.tfidf_max_features, seed=cfg.seed)
    tfidf.save(out)
    embedder = None
    if sc.embedding_model:
        from stacking.embeddings import SentenceEmbedder

        embedder = SentenceEmbedder(sc.embedding_model, batch_size=sc.embedding_batch_size, max_length=sc.embedding_max_length,
                                    cache_dir=cfg.workdir_path / "cache" / "embeddings")
    feats = compute_features(frame, student=student, embedder=embedder, tfidf=tfidf)
    write_keyed_table(out / "features.parquet", pd.concat([frame[["id"]], feats], axis=1), {"input_hash": input_hash, "rows": len(frame)})
    print(f"[stack] {feats.shape[1]} features for {len(frame)} rows ({time.time() - t0:.1f}s)")

    y = frame["label"].astype(int).to_numpy()
    folds = frame["fold"].astype(int).to_numpy()
    models: dict[str, dict | None] = {"stacker": None, "features_only": None}
    files = ["tfidf.json", "tfidf_idf.parquet", "temperature.json", "features.json", "oof.parquet", "report.md"]
    oof = pd.DataFrame({"id": frame["id"].astype(str), "fold": folds, "label": y})
    temps: dict[str, dict] = {}
    importances: dict[str, pd.DataFrame] = {}

    def record(name: str, raw: np.ndarray, temp: TemperatureFit) -> None:
        for col, v in zip(prob_columns(f"{name}_raw"), raw.T):
            oof[col] = v
        for col, v in zip(prob_columns(name), apply_temperature(raw, temp.temperature).T):
            oof[col] = v
        temps[name] = temp.to_dict()

    fo_cols = [c for c in feats.columns if not is_student_column(c)]
    fo = _train_model("features_only", feats[fo_cols], y, folds, cfg, out)
    models["features_only"], files = fo["spec"], files + fo["files"]
    record("features_only", fo["oof_raw"], fo["temperature"])
    importances["features_only"] = fo["importance"]
    if student is not None:
        if sc.enabled:
            st = _train_model("stacker", feats, y, folds, cfg, out)
            models["stacker"], files = st["spec"], files + st["files"]
            record("stacker", st["oof_raw"], st["temperature"])
            importances["stacker"] = st["importance"]
        else:
            raw = student_probs(student)
            temp = fit_temperature(raw, y) if sc.calibrate else _no_temperature(raw, y)
            models["stacker"] = {"kind": STUDENT_ONLY, "features": [], "temperature": temp.temperature}
            record("stacker", raw, temp)
            notes.append("stacking.enabled=false: the 'stacker' is the student's TTA probabilities with a temperature")

    atomic_write_json(out / "temperature.json", temps)
    atomic_write_json(out / "features.json", {name: (spec or {}).get("features", []) for name, spec in models.items()})
    write_keyed_table(out / "oof.parquet", oof, {"input_hash": input_hash, "models": list(temps)})
    _, stages = write_report(cfg.workdir_path, importances, temps, notes)
    manifest = {
        "version": FORMAT_VERSION,
        "input_hash": input_hash,
        "models": models,
        "embedding": {"model": sc.embedding_model, "max_length": sc.embedding_max_length, "batch_size": sc.embedding_batch_size} if sc.embedding_model else None,
        "rows": len(frame),
        "files": sorted(set(files)),
        "stages": stages,
        "notes": notes,
    }
    atomic_write_json(out / MANIFEST, manifest)
    print(format_table(stages))
    print(f"[stack] done in {time.time() - t0:.1f}s: {out}")
    return manifest
