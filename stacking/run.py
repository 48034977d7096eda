"""`arena-kd stack`: features → cross-validated candidates → selection by out-of-fold log loss → report.

Training rows: every labelled row (:mod:`stacking.rows`): the LLM stages' ``data.max_rows`` rows with their student
OOF, plus the rows max_rows left out with the mean of the fold students (``student/heldout.parquet``); the
``provenance`` column of oof.parquet says which. Candidates and the selection rule: :mod:`stacking.candidates`.

Outputs under ``<workdir>/stacking/``:
  tfidf.json, tfidf_idf.parquet        fitted TF-IDF spaces (test-time features use them)
  source_model.json, source_model_coef.parquet   text → source classifier (blend.source_model), ≥ 2 sources only
  features.parquet (+meta)             the training feature table (id + text features)
  <model>_fold<k>.txt, <model>_full.txt   LightGBM candidates: stacker (student TTA), stacker_single (one orientation),
                                       features_only, length_only (fold models + the full model used to predict)
  features.json                        feature list of each model
  oof.parquet (+meta)                  id, fold, label, source, provenance, in_llm_rows, group (prompt),
                                       <model>_raw_{a,b,tie}, <model>_{a,b,tie}
  stacker.json                         manifest: models (each with its temperature, fitted on all its OOF — the OOF
                                       itself is cross-fitted — and the fit's record under temperature_fit; a log pool
                                       with its members, weights, tie offset and pool_fit),
                                       selection per student mode, candidate table, input hash (written last). The one
                                       source of the temperatures the submission applies: no separate temperature.json
                                       is written (issue 22: one was, and nothing read it)
  report.md, *.png, config.resolved.yaml

Without ``<workdir>/student/oof.parquet`` only the candidates that need no student are trained (and said so).
Resumable: when ``stacker.json`` exists with the same input hash (config, data, folds, student OOF) and every
file it names exists, the stage only reprints the table; ``force=True`` retrains.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.blend.booster import capacity, gain_importance, save_booster, train_cv, train_full
from arena_kd.blend.features import (
    features_and_words,
    fit_similarity,
    is_student_column,
    student_features,
    student_probs,
)
from arena_kd.blend.log_pool import cross_fitted_pool, fit_pool
from arena_kd.blend.stacker import LOG_POOL, MANIFEST, PRIOR, STUDENT_ONLY
from arena_kd.blend.temperature import TemperatureFit, fit_temperature
from arena_kd.common.config import PipelineConfig, write_resolved
from arena_kd.common.io import atomic_write_json, file_hash, frame_hash, json_hash, read_keyed_table, write_keyed_table
from arena_kd.common.tables import format_table
from arena_kd.data.folds import prompt_groups
from arena_kd.stacking.candidates import (
    cross_fitted_temperature,
    fold_pooled_prior,
    length_columns,
    pool_members,
    pooled_prior,
    select,
)
from arena_kd.stacking.report import prob_columns, write_report
from arena_kd.stacking.rows import all_rows, load_student

FORMAT_VERSION = 2


def stack_dir(cfg: PipelineConfig) -> Path:
    return cfg.workdir_path / "stacking"


def student_oof_path(cfg: PipelineConfig) -> Path:
    return cfg.workdir_path / "student" / "oof.parquet"


def student_heldout_path(cfg: PipelineConfig) -> Path:
    return cfg.workdir_path / "student" / "heldout.parquet"


def _input_hash(cfg: PipelineConfig, data_hash: str, folds_hash: str, student_hash: str | None) -> str:
    d = {"v": FORMAT_VERSION, "stacking": cfg.stacking.model_dump(mode="json"), "seed": cfg.seed,
         "data": data_hash, "folds": folds_hash, "student": student_hash}
    return json_hash(d)


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


def _train_model(name: str, x: pd.DataFrame, y: np.ndarray, folds: np.ndarray, groups: np.ndarray,
                 cfg: PipelineConfig, out: Path) -> dict[str, Any]:
    """CV + full LightGBM model for one feature set; writes <name>_fold<k>.txt and <name>_full.txt."""
    for old in out.glob(f"{name}_fold*.txt"):
        old.unlink()
    cv = train_cv(x, y, folds, cfg.stacking, cfg.seed, groups=groups)
    files = [save_booster(b, out / f"{name}_fold{k}.txt").name for b, k in zip(cv.boosters, cv.fold_ids)]
    full = train_full(x, y, cfg.stacking, cfg.seed, cv.full_rounds)
    files.append(save_booster(full, out / f"{name}_full.txt").name)
    spec = {"kind": "lightgbm", "features": list(x.columns), "model_file": f"{name}_full.txt", "fold_files": files[:-1],
            "best_iterations": cv.best_iterations, "full_rounds": cv.full_rounds,
            "capacity": capacity(cfg.stacking, len(x))}
    return {"spec": spec, "files": files, "oof_raw": cv.oof, "importance": gain_importance(full)}


def _no_temperature(probs: np.ndarray, y: np.ndarray) -> TemperatureFit:
    from arena_kd.common.metrics import log_loss

    ll = log_loss(y, probs)
    return TemperatureFit(1.0, ll, ll, len(y))


def _student_max_length(path: Path) -> int | None:
    try:
        return read_keyed_table(path)[1].get("predict_max_length")
    except Exception:  # noqa: BLE001 - a fake or foreign OOF file without the sidecar field
        return None


def run_stacking(cfg: PipelineConfig, force: bool = False) -> dict:
    """Train the candidates for ``cfg``, choose per student mode (see module doc); returns the manifest
    (stacker.json)."""
    from arena_kd.kfold.training_data import DATA_HASH_COLUMNS, load_training_data

    t0 = time.time()
    out = stack_dir(cfg)
    sc = cfg.stacking
    data = load_training_data(cfg)
    frame = all_rows(data, cfg.folds.n_folds, cfg.seed, own_folds=sc.n_folds)
    notes: list[str] = []
    if sc.n_folds is not None:
        notes.append(f"stacker folds: {sc.n_folds} (stacking.n_folds; grouped by prompt), not the LLM stages' "
                     f"{cfg.folds.n_folds}")
    spath, hpath = student_oof_path(cfg), student_heldout_path(cfg)
    student, student_hash = None, None
    provenance = ["none"] * len(frame)
    if spath.is_file():
        student, present, provenance = load_student(spath, hpath, frame)
        student_hash = file_hash(spath) + (file_hash(hpath) if hpath.is_file() else "")
        if not present.all():
            notes.append(f"the student predicted {int(present.sum())} of {len(frame)} labelled rows; every candidate "
                         "trains on those rows (student.predict_heldout=true lets the fold students predict the rest)")
            frame = frame[present].reset_index(drop=True)
    else:
        notes.append(f"no student OOF at {spath}: training the candidates that need no student only")
    frame["provenance"] = provenance
    counts = frame["provenance"].value_counts().to_dict()
    notes.append("stacker rows: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for n in notes:
        print(f"[stack] {n}")

    rows_hash = frame_hash(frame.assign(fold=frame["fold"].astype(int)),
                           [*DATA_HASH_COLUMNS, "source", "fold", "provenance"])
    input_hash = _input_hash(cfg, rows_hash, data.folds_hash, student_hash)
    if not force:
        manifest = _up_to_date(out, input_hash)
        if manifest is not None:
            print(f"[stack] {out / MANIFEST} is up to date (input hash {input_hash}); --force retrains")
            print(format_table(manifest.get("stages", []), counts=True))
            return manifest

    out.mkdir(parents=True, exist_ok=True)
    tfidf = fit_similarity(frame, n_features=sc.tfidf_max_features, seed=cfg.seed)
    tfidf.save(out)
    embedder = None
    if sc.embedding_model:
        from arena_kd.blend.embeddings import SentenceEmbedder

        embedder = SentenceEmbedder(sc.embedding_model, batch_size=sc.embedding_batch_size,
                                    max_length=sc.embedding_max_length,
                                    cache_dir=cfg.workdir_path / "cache" / "embeddings")
    feats, words = features_and_words(frame, None, embedder, tfidf)
    folds = frame["fold"].astype(int).to_numpy()
    source_model = None
    if sc.source_features:
        from arena_kd.blend.source_model import fit_source_features

        fitted = fit_source_features(frame, folds, tfidf, cfg.seed, words)
        if fitted is not None:
            feats, source_model = pd.concat([feats, fitted[0]], axis=1), fitted[1]
            notes.append(f"source features {', '.join(source_model.columns)}: text classifier of the row's source "
                         f"({', '.join(source_model.classes)}), cross-fitted on the stacker folds")
    write_keyed_table(out / "features.parquet", pd.concat([frame[["id"]], feats], axis=1),
                      {"input_hash": input_hash, "rows": len(frame)})
    print(f"[stack] {feats.shape[1]} text features for {len(frame)} rows ({time.time() - t0:.1f}s)")

    y = frame["label"].astype(int).to_numpy()
    groups = prompt_groups(frame)
    models: dict[str, dict | None] = {}
    files = ["tfidf.json", "tfidf_idf.parquet", "features.json", "oof.parquet", "report.md"]
    if source_model is not None:
        files += source_model.save(out)
    oof = pd.DataFrame({"id": frame["id"].astype(str).to_numpy(), "fold": folds, "label": y,
                        "source": frame["source"].astype(str).to_numpy(), "provenance": frame["provenance"].to_numpy(),
                        "in_llm_rows": frame["in_llm_rows"].to_numpy(dtype=bool),
                        "group": groups})
    calibrated: dict[str, np.ndarray] = {}
    raws: dict[str, np.ndarray] = {}
    temps: dict[str, dict] = {}
    importances: dict[str, pd.DataFrame] = {}

    def record(name: str, spec: dict, raw: np.ndarray, fit_t: bool = True) -> None:
        temp = fit_temperature(raw, y) if (sc.calibrate and fit_t) else _no_temperature(raw, y)
        cal = cross_fitted_temperature(raw, y, folds) if (sc.calibrate and fit_t) else raw
        for col, v in zip(prob_columns(f"{name}_raw"), raw.T):
            oof[col] = v
        for col, v in zip(prob_columns(name), cal.T):
            oof[col] = v
        models[name] = {**spec, "temperature": temp.temperature, "temperature_fit": temp.to_dict()}
        temps[name] = temp.to_dict()
        calibrated[name], raws[name] = cal, raw

    def lightgbm(name: str, x: pd.DataFrame) -> None:
        nonlocal files
        res = _train_model(name, x, y, folds, groups, cfg, out)
        files += res["files"]
        importances[name] = res["importance"]
        record(name, res["spec"], res["oof_raw"])

    fo_cols = [c for c in feats.columns if not is_student_column(c)]
    lightgbm("features_only", feats[fo_cols])
    lightgbm("length_only", length_columns(feats))
    record("prior", {"kind": PRIOR, "features": [], "probs": pooled_prior(y).tolist()}, fold_pooled_prior(y, folds),
           fit_t=False)
    modes = ["none"]
    if student is not None:
        modes = (["tta"] if student["swap"] is not None else []) + ["single", "none"]
        if student["swap"] is None:
            notes.append("the student OOF has no swapped orientation (student.predict.tta=false): only the "
                         "single-orientation candidates are trained")
        for mode in modes[:-1]:
            suffix = "" if mode == "tta" else "_single"
            stud = student if mode == "tta" else {"orig": student["orig"], "swap": None}
            record(f"student{suffix}", {"kind": STUDENT_ONLY, "features": [], "student_input": mode},
                   student_probs(stud))
            if sc.enabled:
                cols = pd.DataFrame(student_features(stud["orig"], stud["swap"]))
                lightgbm(f"stacker{suffix}", pd.concat([feats, cols], axis=1))
                models[f"stacker{suffix}"]["student_input"] = mode
                if sc.log_pool:
                    members = pool_members(mode)
                    parts = [raws[m] for m in members]  # before temperature: the pool's weights are its temperature
                    fit = fit_pool(parts, y)
                    record(f"log_pool{suffix}", {"kind": LOG_POOL, "features": [], "members": members,
                                                 "weights": fit.weights, "tie_offset": fit.tie_offset,
                                                 "pool_fit": fit.to_dict(), "student_input": mode},
                           cross_fitted_pool(parts, y, folds), fit_t=False)
            else:
                notes.append(f"stacking.enabled=false: the '{mode}' stacker is the student's probabilities with a "
                             "temperature")
                models[f"stacker{suffix}"] = models[f"student{suffix}"]
                calibrated[f"stacker{suffix}"] = calibrated[f"student{suffix}"]
    models.setdefault("stacker", None)

    winners, tables = select(calibrated, y, groups, modes, enabled=sc.select, seed=cfg.seed, rule=sc.select_rule)
    winners["short"] = winners["none"]
    notes.append(f"selection rule (stacking.select_rule): {sc.select_rule}" + (
        "" if sc.select else " (unused: stacking.select=false keeps the full stacker)"))
    for mode, name in winners.items():
        if mode != "short":
            loss = {r["name"]: r["log_loss"] for r in tables[mode]}[name]
            notes.append(f"selected for student mode '{mode}': {name} (out-of-fold log loss {loss:.4f})")
    atomic_write_json(out / "features.json", {name: (spec or {}).get("features", []) for name, spec in models.items()})
    write_keyed_table(out / "oof.parquet", oof, {"input_hash": input_hash, "models": list(temps), "selection": winners})
    _, stages = write_report(cfg.workdir_path, importances, temps, notes, tables=tables, winners=winners, seed=cfg.seed)
    manifest = {
        "version": FORMAT_VERSION,
        "input_hash": input_hash,
        "models": models,
        "selection": winners,
        "candidates": tables,
        "short_rule": "rows the student saw at a max length below student_max_length use the 'none' winner (no stacker "
                      "was trained on truncated student logits)",
        "student_max_length": _student_max_length(spath) if student is not None else None,
        "source_model": None if source_model is None else {"classes": source_model.classes,
                                                           "columns": source_model.columns},
        "embedding": {"model": sc.embedding_model, "max_length": sc.embedding_max_length,
                      "batch_size": sc.embedding_batch_size} if sc.embedding_model else None,
        "rows": len(frame),
        "provenance": {k: int(v) for k, v in counts.items()},
        "files": sorted(set(files)),
        "stages": stages,
        "notes": notes,
    }
    atomic_write_json(out / MANIFEST, manifest)
    write_resolved(cfg, out)  # once the folder is complete (see teachers.run)
    print(format_table(stages, counts=True))
    print(f"[stack] done in {time.time() - t0:.1f}s: {out}")
    return manifest
