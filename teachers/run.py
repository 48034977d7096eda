"""`arena-kd teachers`: k-fold teacher fine-tuning → OOF logits per teacher → combined soft labels.

Outputs under ``<workdir>/teachers/``:
  <name>/fold<k>.parquet (+meta)   one fold's held-out predictions (the resume unit)
  <name>/oof.parquet (+meta)       id, fold, logit_a, logit_b, logit_tie (TTA avg) for every training row
  <name>/extra.parquet (+meta)     pseudo-labels of data.extra (mean of the fold models), when predict_extra
  soft_labels.parquet (+meta)      id, logit_a/b/tie (log of the combined, tempered probs) + t_<name>_a/b/tie
  soft_labels_extra.parquet        the same for data.extra, when predict_extra
  config.resolved.yaml             the config of these outputs, written when the stage has finished
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.blend.temperature import fit_temperature
from arena_kd.common.config import PipelineConfig, write_resolved
from arena_kd.common.config_model import PLACEMENT_FIELDS, model_hash_view
from arena_kd.common.config_stages import TeacherConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import file_hash, json_hash, read_keyed_table, read_sidecar, sidecar_path, write_keyed_table
from arena_kd.common.keys import LOGIT_COLUMNS
from arena_kd.common.metrics import accuracy, log_loss
from arena_kd.kfold import dist
from arena_kd.kfold.dist import main_write
from arena_kd.kfold.fold_model import train_and_predict
from arena_kd.kfold.oof import align_logits, oof_logits, read_teacher_logits
from arena_kd.kfold.runner import FaultInjector, fold_metrics, mean_fold_logprobs, model_meta, run_folds, tta_frame
from arena_kd.kfold.soft_labels import teacher_columns
from arena_kd.kfold.training_data import TrainingData, load_training_data, read_extra
from arena_kd.teachers.combine import combine_logits, resolve_weights, teacher_probs, temper_logits


def teacher_config_hash(cfg: PipelineConfig, teacher: TeacherConfig) -> str:
    """Hash of everything that changes a teacher's OOF logits: its section (not its ensemble weight), render, seed."""
    # placement (device_map / max_memory) says where the weights live, not what they compute: moving a run to other
    # hardware keeps its finished folds
    section = teacher.model_dump(mode="json", exclude={"weight": True, "model": set(PLACEMENT_FIELDS)})
    if isinstance(section.get("model"), dict):
        model_hash_view(section["model"])
    return json_hash({"teacher": section, "render": cfg.render.model_dump(mode="json"), "seed": cfg.seed})


def teacher_hashes(cfg: PipelineConfig, teacher: TeacherConfig, data: TrainingData) -> dict[str, str]:
    """The resume identity of one teacher's OOF: its config hash, the training rows and the folds file."""
    return {"config": teacher_config_hash(cfg, teacher), "data": data.data_hash, "folds": data.folds_hash}


def teachers_dir(cfg: PipelineConfig) -> Path:
    return cfg.workdir_path / "teachers"


def _check_names(cfg: PipelineConfig) -> None:
    names = [t.name for t in cfg.teachers.models]
    if not names:
        raise UserError("teachers.models: no teachers configured")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"teachers.models: duplicate teacher name '{sorted(dup)[0]}'")
    bad = [n for n in names if not n or "/" in n or n.startswith(".")]
    if bad:
        raise UserError(f"teachers.models: teacher name '{bad[0]}' must be a plain folder name")


def _load_extra(cfg: PipelineConfig, train_ids: pd.Series) -> pd.DataFrame | None:
    """data.extra rows to pseudo-label (ids must not collide with training ids)."""
    if not cfg.teachers.predict_extra or not cfg.data.extra:
        return None
    return read_extra(cfg, train_ids)


def _overall(frame: pd.DataFrame, oof: pd.DataFrame) -> dict[str, float]:
    merged = frame[["id", "label"]].merge(oof, on="id", how="inner")
    return fold_metrics(merged["label"].astype(int).to_numpy(), merged[list(LOGIT_COLUMNS)].to_numpy())


def _model_teacher(cfg: PipelineConfig, t: TeacherConfig, data: TrainingData, extra: pd.DataFrame | None,
                   *, force: bool, fault: FaultInjector) -> pd.DataFrame:
    out_dir = teachers_dir(cfg) / t.name
    hashes = teacher_hashes(cfg, t, data)
    if extra is not None:
        id_hashes = pd.util.hash_pandas_object(extra["id"].astype(str), index=False).to_numpy()
        hashes["extra"] = hashlib.sha256(id_hashes.tobytes()).hexdigest()[:16]

    def fit_predict(k: int, train_df: pd.DataFrame, valid_df: pd.DataFrame, fold_dir: Path):
        # transformers / bitsandbytes only once the data has been read and checked: a data error stays one line,
        # without their import-time log noise before it
        from arena_kd.llm.train import frame_texts

        tta, meta, extra_pred = train_and_predict(
            t.model, t.train, t.predict, cfg.render, train_df, valid_df, fold_dir,
            seed=cfg.seed + k, init_seed=cfg.seed, workdir=cfg.workdir, also_predict=extra,
            tokenizer_texts=frame_texts(data.frame),
        )
        if extra_pred is not None:  # written before the fold file, so a finished fold always has its extra file
            main_write(write_keyed_table, out_dir / f"extra_fold{k}.parquet", tta_frame(extra["id"], k, extra_pred),
                       {"fold": k, "hashes": hashes})
        return tta, meta

    folds = run_folds(data.frame, out_dir, hashes, fit_predict, force=force, fault=fault, label=t.name)
    oof = pd.concat(folds, ignore_index=True)[["id", "fold", *LOGIT_COLUMNS]]
    oof = data.frame[["id"]].merge(oof, on="id", how="left")  # training-row order
    per_fold = {}
    wall = 0.0
    for k in sorted(oof["fold"].unique()):
        _, fm = read_keyed_table(out_dir / f"fold{int(k)}.parquet")
        per_fold[str(int(k))] = fm["metrics"]
        wall += float(fm.get("wall_time_s", 0.0))
    meta = {
        "teacher": t.name,
        "source": "model",
        **model_meta(t.model, t.train, t.predict, cfg.render),
        "hashes": hashes,
        "per_fold": per_fold,
        "overall": _overall(data.frame, oof),
        "wall_time_s": round(wall, 3),
    }
    main_write(write_keyed_table, out_dir / "oof.parquet", oof, meta)
    if extra is not None:
        _average_extra(out_dir, sorted(int(k) for k in oof["fold"].unique()), extra, hashes)
    return oof


def _average_extra(out_dir: Path, folds: list[int], extra: pd.DataFrame, hashes: dict[str, str]) -> None:
    """Mean of the fold models' log-probabilities on data.extra → <name>/extra.parquet."""
    out = mean_fold_logprobs([out_dir / f"extra_fold{k}.parquet" for k in folds], extra["id"], hashes)
    main_write(write_keyed_table, out_dir / "extra.parquet", out,
               {"folds": folds, "hashes": hashes, "reduction": "mean log-softmax over fold models"})


def _offline_teacher(cfg: PipelineConfig, t: TeacherConfig, data: TrainingData) -> pd.DataFrame:
    table, kind = read_teacher_logits(t.logits_file)
    logits = align_logits(t.logits_file, table, data.frame["id"])
    oof = pd.DataFrame({"id": data.frame["id"].to_numpy(), "fold": data.frame["fold"].to_numpy()})
    for j, c in enumerate(LOGIT_COLUMNS):
        oof[c] = logits[:, j]
    labels = data.frame["label"].astype(int).to_numpy()
    fold = data.frame["fold"].to_numpy()
    per_fold = {str(int(k)): fold_metrics(labels[fold == k], logits[fold == k]) for k in sorted(set(fold))}
    meta = {
        "teacher": t.name,
        "source": "logits",
        "logits_file": str(t.logits_file),
        "logits_file_hash": file_hash(t.logits_file),
        "detected": kind,
        "hashes": teacher_hashes(cfg, t, data),
        "per_fold": per_fold,
        "overall": fold_metrics(labels, logits),
        "wall_time_s": 0.0,
    }
    main_write(write_keyed_table, teachers_dir(cfg) / t.name / "oof.parquet", oof, meta)
    if cfg.teachers.predict_extra and cfg.data.extra:
        print(f"[{t.name}] offline teacher: no pseudo-labels for data.extra (only model teachers predict extra rows)")
    return oof


def _soft_label_frame(ids: pd.Series, names: list[str], logits: list[np.ndarray], weights: np.ndarray,
                      temperature: float) -> pd.DataFrame:
    probs = teacher_probs(logits)
    combined = combine_logits(probs, weights, temperature)
    out = pd.DataFrame({"id": ids.astype(str).to_numpy()})
    for j, c in enumerate(LOGIT_COLUMNS):
        out[c] = combined[:, j].astype(np.float32)
    for name, lg in zip(names, logits):
        tl = temper_logits(lg, temperature)
        for j, c in enumerate(teacher_columns(name)):
            out[c] = tl[:, j].astype(np.float32)
    return out


def teacher_table(rows: list[tuple[str, float | None, dict[str, float]]]) -> str:
    """The console table of the teachers stage (fixed-width text, not the reports' Markdown
    ``common.tables.format_table``): name, weight, OOF log loss, accuracy, rows."""
    lines = [f"{'teacher':<28} {'weight':>7} {'oof_logloss':>12} {'accuracy':>9} {'rows':>7}"]
    for name, w, m in rows:
        ws = f"{w:7.3f}" if w is not None else f"{'-':>7}"
        lines.append(f"{name:<28} {ws} {m['log_loss']:12.4f} {m['accuracy']:9.3f} {m['rows']:7d}")
    return "\n".join(lines)


def _combine_temperature(setting: float | str, probs: np.ndarray, weights: np.ndarray,
                         labels: np.ndarray) -> tuple[float, dict[str, Any] | None]:
    """(T, the fit's record or None) for ``teachers.combine.temperature``: a number as is; ``fit``: the T minimising the
    mixture's OOF log loss (blend.temperature; T = 1 unless better on these rows)."""
    if setting != "fit":
        return float(setting), None
    fit = fit_temperature(np.exp(combine_logits(probs, weights, 1.0)), labels)
    return float(fit.temperature), fit.to_dict()


def combine_teachers(cfg: PipelineConfig, data: TrainingData, oofs: dict[str, pd.DataFrame],
                     hashes: dict[str, str]) -> dict[str, Any]:
    """Weights + temperature → soft_labels.parquet (+ soft_labels_extra.parquet); prints the table."""
    names = list(oofs)
    ids = data.frame["id"]
    labels = data.frame["label"].astype(int).to_numpy()
    logits = [oof_logits(oofs[n], ids) for n in names]
    probs = teacher_probs(logits)
    configured = [t.weight for t in cfg.teachers.models]
    weights = resolve_weights(cfg.teachers.combine.weights, names, configured, probs, labels)
    T, t_fit = _combine_temperature(cfg.teachers.combine.temperature, probs, weights, labels)
    soft = _soft_label_frame(ids, names, logits, weights, T)
    sp = np.exp(soft[list(LOGIT_COLUMNS)].to_numpy(dtype=np.float64))
    ensemble = {"log_loss": log_loss(labels, sp), "accuracy": accuracy(labels, sp), "rows": int(len(labels))}
    per_teacher = {n: fold_metrics(labels, lg) for n, lg in zip(names, logits)}
    meta = {
        "teachers": names,
        "weights": {n: float(w) for n, w in zip(names, weights)},
        "weights_mode": cfg.teachers.combine.weights,
        "temperature": T,
        "temperature_mode": "fit" if t_fit else "fixed",
        **({"temperature_fit": t_fit} if t_fit else {}),
        "temperature_applies_to": "combined and per-teacher columns",
        "hashes": hashes,
        "ensemble": ensemble,
        "per_teacher": per_teacher,
        "per_teacher_columns": {n: teacher_columns(n) for n in names},
    }
    out = teachers_dir(cfg) / "soft_labels.parquet"
    main_write(write_keyed_table, out, soft, meta)
    extra_paths = [teachers_dir(cfg) / n / "extra.parquet" for n in names]
    current = [extra_is_current(p, hashes, n) for n, p in zip(names, extra_paths)]
    extra_out = teachers_dir(cfg) / "soft_labels_extra.parquet"
    if cfg.teachers.predict_extra and cfg.data.extra and all(current):
        ex = [read_keyed_table(p)[0] for p in extra_paths]
        ex_ids = ex[0]["id"]
        ex_soft = _soft_label_frame(ex_ids, names, [oof_logits(e, ex_ids) for e in ex], weights, T)
        main_write(write_keyed_table, extra_out, ex_soft,
                   {**meta, "rows": "data.extra pseudo-labels (no labels: metrics are those of the training OOF)"})
    else:
        # An earlier combine's pseudo-labels (other teachers, weights or T) must not outlive it: the report would score
        # them as this run's teacher ensemble, the student would train on them. Every process takes this branch (the
        # condition reads config and per-teacher files only): main_write's barrier must be reached by all.
        why = ("teachers.predict_extra is off or data.extra is empty"
               if not (cfg.teachers.predict_extra and cfg.data.extra) else
               f"no current predictions for data.extra from {', '.join(n for n, ok in zip(names, current) if not ok)}")
        main_write(_remove_stale_extra, extra_out, why)
    rows = [(n, float(w), per_teacher[n]) for n, w in zip(names, weights)] + [("ENSEMBLE", None, ensemble)]
    print(teacher_table(rows))
    fitted = (f" fitted on the OOF rows: log loss {t_fit['log_loss_before']:.4f} at T=1 → {t_fit['log_loss_after']:.4f}"
              if t_fit else "")
    print(f"soft labels: {out} (weights={cfg.teachers.combine.weights}, T={T:.3g}{fitted})")
    return meta


def extra_is_current(path: Path, hashes: dict[str, str], name: str) -> bool:
    """Whether a teacher's ``extra.parquet`` was made by this teacher's config, rows and folds (a file left by an
    earlier teacher of the same name, e.g. a model teacher since replaced by an offline file, is not)."""
    if not path.is_file():
        return False
    made_by = read_sidecar(path).get("hashes", {})
    return (made_by.get("config") == hashes.get(f"teacher:{name}") and made_by.get("data") == hashes.get("data")
            and made_by.get("folds") == hashes.get("folds"))


def _remove_stale_extra(path: Path, why: str) -> None:
    """Delete ``soft_labels_extra.parquet`` and its sidecar if there, saying why."""
    if not path.is_file():
        return
    for p in (path, sidecar_path(path)):
        p.unlink(missing_ok=True)
    print(f"removed stale {path}: {why}")


def run_teachers(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    """Run every teacher k-fold (resumable per fold), then combine into soft labels. Returns the soft-label meta."""
    _check_names(cfg)
    t0 = time.time()
    dist.start(cfg.collective_timeout_s)  # multi-process launch: the group is up before the first write
    with dist.main_first():  # rank 0 creates the folds file, the others read it
        data = load_training_data(cfg)
    tdir = teachers_dir(cfg)
    tdir.mkdir(parents=True, exist_ok=True)
    extra = _load_extra(cfg, data.frame["id"])
    fault = FaultInjector()
    oofs: dict[str, pd.DataFrame] = {}
    for t in cfg.teachers.models:
        if t.source == "logits":
            oofs[t.name] = _offline_teacher(cfg, t, data)
        else:
            oofs[t.name] = _model_teacher(cfg, t, data, extra, force=force, fault=fault)
    hashes = {"data": data.data_hash, "folds": data.folds_hash,
              **{f"teacher:{t.name}": teacher_config_hash(cfg, t) for t in cfg.teachers.models}}
    meta = combine_teachers(cfg, data, oofs, hashes)
    if cfg.teachers.nested:  # per student fold k, teachers that never saw fold k (teachers/nested.py)
        from arena_kd.teachers.nested import run_nested_teacher, write_nested_soft_labels

        nested = {t.name: run_nested_teacher(cfg, t, data.frame, teachers_dir(cfg) / t.name,
                                             teacher_hashes(cfg, t, data), force=force, fault=fault)
                  for t in cfg.teachers.models if t.source == "model"}
        side = {k: meta[k] for k in ("teachers", "weights", "temperature", "per_teacher_columns", "hashes")}
        weights = np.asarray([meta["weights"][n] for n in oofs])
        write_nested_soft_labels(cfg, list(oofs), nested, oofs, weights, _soft_label_frame, side,
                                 data.frame[["id", "label"]])
    # the record of the config that made the outputs beside it: written once they all exist, so a run refused on
    # resume (another config's fold files) or one that failed never replaces the record of the outputs it left
    main_write(write_resolved, cfg, tdir)
    print(f"teachers done in {time.time() - t0:.1f}s")
    return meta

