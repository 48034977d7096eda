"""`arena-kd distill`: k-fold student OOF logits, the final student, and its export.

Outputs under ``<workdir>/student/``:
  fold<k>.parquet (+meta)   one fold's held-out TTA logits (resume unit); fold<k>/ holds that fold's adapter
  oof.parquet (+meta)       id, fold, logit_* (TTA avg), orig_logit_*, swap_logit_* for every training row
  final/                    final adapter (full retrain, or the average of the fold adapters) + final.json
                            (fold_ensemble: final.json only; the fold adapters are exported as members)
  export/                   see arena_kd.llm.export
  config.resolved.yaml      the config of these outputs, written when the stage has finished (arena_kd.teachers.run)
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from arena_kd.common.config import PipelineConfig, write_resolved
from arena_kd.common.config_model import PLACEMENT_FIELDS, model_hash_view, without_added_defaults
from arena_kd.common.config_stages import DistillConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import atomic_write_json, json_hash, read_keyed_table, write_keyed_table
from arena_kd.common.keys import LOGIT_COLUMNS
from arena_kd.kfold import dist
from arena_kd.kfold.dist import main_write
from arena_kd.kfold.fold_model import train_and_predict
from arena_kd.kfold.runner import (
    ORIG_COLUMNS,
    SWAP_COLUMNS,
    FaultInjector,
    check_hashes,
    fold_metrics,
    fold_path,
    mean_fold_logprobs,
    model_meta,
    run_folds,
    tta_frame,
)
from arena_kd.kfold.soft_labels import SoftLabels, attach_teacher_logits, load_soft_labels
from arena_kd.kfold.training_data import TrainingData, load_training_data
from arena_kd.student.extra_pairs import ExtraPairs, load_extra_pairs, rows_for_fold, with_extra
from arena_kd.student.losses import DistillationLoss, WinnersLoss

OOF_COLUMNS = ["id", "fold", *LOGIT_COLUMNS, *ORIG_COLUMNS, *SWAP_COLUMNS]
# distill settings added after runs were made (issue 21): hashed only when set
ADDED_DISTILL_KEYS = ("teacher_weights", "mix", "cosine_weight", "prior_match", "prior_match_rows")


def student_dir(cfg: PipelineConfig) -> Path:
    return cfg.workdir_path / "student"


def student_config_hash(cfg: PipelineConfig) -> str:
    """Everything that changes a fold student's predictions (not final/export choices)."""
    s = cfg.student.model_dump(mode="json", include={"model", "train", "predict", "distill"},
                               exclude={"model": set(PLACEMENT_FIELDS)})  # placement: where, not what (as for teachers)
    s["distill"].pop("soft_labels", None)  # the file's content hash is tracked separately
    model_hash_view(s["model"])
    # at their defaults they change nothing: runs made before them stay valid
    without_added_defaults(s["distill"], DistillConfig, ADDED_DISTILL_KEYS)
    if not cfg.student.distill.uses_teachers:  # settings of the soft labels change nothing without soft terms
        for key in ("prior_match", "prior_match_rows"):
            s["distill"].pop(key, None)
    return json_hash({"student": s, "render": cfg.render.model_dump(mode="json"), "seed": cfg.seed})


def _print_compare(title: str, student: dict, teacher: dict | None) -> None:
    t = f" | teacher ensemble {teacher['log_loss']:.4f} (acc {teacher['accuracy']:.3f})" if teacher else ""
    print(f"[student] {title}: student OOF log loss {student['log_loss']:.4f} (acc {student['accuracy']:.3f}, "
          f"{student['rows']} rows){t}")


def _oof_stage(cfg, data: TrainingData, frame: pd.DataFrame, soft: SoftLabels | None, hashes, loss_fn, *, force,
               fault, extra: ExtraPairs | None = None) -> pd.DataFrame:
    sdir = student_dir(cfg)
    s = cfg.student

    heldout = heldout_rows(cfg, data)

    def fit_predict(k: int, train_df: pd.DataFrame, valid_df: pd.DataFrame, fold_dir: Path):
        # nested: teacher labels from teachers that never saw fold k (teachers/nested.py writes them)
        if s.distill.nested and s.distill.uses_teachers:
            from arena_kd.kfold.soft_labels import load_nested_logits

            nested = load_nested_logits(cfg.soft_labels_path(), k, train_df["id"], s.distill.per_teacher)
            train_df = train_df.assign(teacher_logits=nested)
        # the extra rows whose question is not in fold k (student/extra_pairs.py); never among the scored rows
        train_df = with_extra(train_df, rows_for_fold(extra, k))
        train_df = _prior_matched(s.distill, train_df, f"fold {k}")  # offsets from this fold's training rows only
        from arena_kd.llm.train import frame_texts  # heavy: only once the data is checked (see teachers.run)

        tta, meta, held = train_and_predict(
            s.model, s.train, s.predict, cfg.render, train_df, valid_df, fold_dir,
            seed=cfg.seed + k, init_seed=cfg.seed, workdir=cfg.workdir, loss_fn=loss_fn, also_predict=heldout,
            tokenizer_texts=frame_texts(data.frame),
        )
        if held is not None:  # written before the fold file, so a finished fold always has its held-out predictions
            main_write(write_keyed_table, sdir / f"heldout_fold{k}.parquet", tta_frame(heldout["id"], k, held),
                       {"fold": k, "hashes": hashes})
        return tta, meta

    folds = run_folds(frame, sdir, hashes, fit_predict, force=force, fault=fault, label="student")
    if heldout is not None:
        _average_heldout(sdir, sorted(int(k) for k in frame["fold"].unique()), heldout, hashes)
    oof = data.frame[["id"]].merge(pd.concat(folds, ignore_index=True), on="id", how="left")[OOF_COLUMNS]
    labels = data.frame["label"].astype(int).to_numpy()
    teacher_logp = soft.combined if soft is not None else None
    per_fold = {}
    for k in sorted(oof["fold"].unique()):
        mask = oof["fold"].to_numpy() == k
        sm = fold_metrics(labels[mask], oof.loc[mask, list(LOGIT_COLUMNS)].to_numpy())
        tm = fold_metrics(labels[mask], teacher_logp[mask]) if teacher_logp is not None else None
        _, fm = read_keyed_table(fold_path(sdir, int(k)))
        per_fold[str(int(k))] = {"student": sm, "teacher_ensemble": tm, "wall_time_s": fm.get("wall_time_s"),
                                 "adapter_dir": fm.get("adapter_dir")}
        _print_compare(f"fold {int(k)}", sm, tm)
    overall = fold_metrics(labels, oof[list(LOGIT_COLUMNS)].to_numpy())
    t_overall = fold_metrics(labels, teacher_logp) if teacher_logp is not None else None
    _print_compare("overall", overall, t_overall)
    meta = {
        "stage": "student",
        **model_meta(s.model, s.train, s.predict, cfg.render),
        "distill": s.distill.model_dump(mode="json"),
        "hashes": hashes,
        "per_fold": per_fold,
        "overall": {"student": overall, "teacher_ensemble": t_overall},
        "wall_time_s": round(sum(float(v["wall_time_s"] or 0) for v in per_fold.values()), 3),
    }
    main_write(write_keyed_table, sdir / "oof.parquet", oof, meta)
    return oof


def heldout_rows(cfg: PipelineConfig, data: TrainingData) -> pd.DataFrame | None:
    """The labelled rows data.max_rows left out, when the fold students should predict them
    (student.predict_heldout)."""
    if not (cfg.student.oof and cfg.student.predict_heldout) or data.heldout is None or data.heldout.empty:
        return None
    return data.heldout


def _average_heldout(sdir: Path, folds: list[int], heldout: pd.DataFrame, hashes: dict[str, str]) -> pd.DataFrame:
    """Mean of the fold students' log-probabilities on the held-out rows, per orientation → student/heldout.parquet.

    Same columns as oof.parquet (fold = -1) plus ``provenance`` = 'heldout': no fold model trained on these rows,
    so they are as honest as the OOF rows (the prediction is a k-model mean, like the final student's role at test)."""
    paths = [sdir / f"heldout_fold{k}.parquet" for k in folds]
    out = mean_fold_logprobs(paths, heldout["id"], hashes, groups=(LOGIT_COLUMNS, ORIG_COLUMNS, SWAP_COLUMNS))
    out.insert(1, "fold", -1)
    out["provenance"] = "heldout"
    labels = heldout["label"].astype(int).to_numpy()
    metrics = fold_metrics(labels, out[list(LOGIT_COLUMNS)].to_numpy())
    print(f"[student] held-out rows (beyond data.max_rows, mean of {len(folds)} fold models): "
          f"log loss {metrics['log_loss']:.4f} "
          f"(acc {metrics['accuracy']:.3f}, {metrics['rows']} rows)")
    main_write(write_keyed_table, sdir / "heldout.parquet", out,
               {"folds": folds, "hashes": hashes, "metrics": metrics,
                "reduction": "mean log-softmax over fold models, per orientation"})
    return out


def _final_stage(cfg, frame: pd.DataFrame, hashes: dict[str, str], loss_fn, *, force: bool,
                 extra: ExtraPairs | None = None):
    """Train/average the final adapter. Returns (adapter_dir, in-memory (model, tokenizer) or None, final hashes)."""
    sdir = student_dir(cfg)
    s = cfg.student
    fdir = sdir / "final"
    fhashes = {**hashes, "final": s.final, **({"soup": s.soup} if s.final == "fold_soup" else {})}
    record = fdir / "final.json"
    if record.is_file() and not force:
        from arena_kd.llm.export import read_json_record

        done = read_json_record(record, "rerun `arena-kd distill --force` to redo the final stage")
        check_hashes(record, done, fhashes)
        if done.get("adapter_dir") and Path(done["adapter_dir"]).exists():
            print(f"[student] final ({s.final}): done earlier, skipped")
            return Path(done["adapter_dir"]), None, fhashes
    if force:  # unconditional: a rank that looked after rank 0 removed it would skip this barrier
        main_write(shutil.rmtree, fdir, ignore_errors=True)
    t0 = time.time()
    in_memory = None
    if s.final == "fold_ensemble":  # nothing to train: the fold students are the final model (export_ensemble)
        from arena_kd.student.export_stage import fold_adapter_dirs

        dirs = fold_adapter_dirs(cfg, frame)
        adapter = dirs[0]
        print(f"[student] final: the {len(dirs)} fold students, averaged at submission (fold_ensemble)")
    elif s.final == "full":
        from arena_kd.llm.train import frame_texts, train_classifier

        print(f"[student] final: training on all {len(frame)} rows")
        # no held-out rows exist in full mode: evaluate (on training rows, a sanity check) only when asked to
        eval_df = frame.head(min(len(frame), 64)).reset_index(drop=True) if s.train.eval_steps else None
        train_df = with_extra(frame, None if extra is None else extra.frame)  # every extra row: no fold is scored
        train_df = _prior_matched(s.distill, train_df, "final")
        result = train_classifier(s.model, s.train, cfg.render, train_df, eval_df, fdir / "run", seed=cfg.seed,
                                  workdir=cfg.workdir, loss_fn=loss_fn,
                                  tokenizer_texts=frame_texts(frame))
        adapter = Path(result.adapter_dir)
        in_memory = (result.model, result.tokenizer)
        from arena_kd.kfold.runner import remove_checkpoints

        main_write(remove_checkpoints, fdir / "run")
    else:  # fold_soup
        from arena_kd.llm.lora import soup_adapters
        from arena_kd.student.export_stage import fold_adapter_dirs

        dirs = fold_adapter_dirs(cfg, frame)
        adapter = fdir / "adapter"
        main_write(soup_adapters, dirs, adapter, s.soup)
        print(f"[student] final: {s.soup} soup of {len(dirs)} fold adapters → {adapter}")
    main_write(atomic_write_json, record, {"hashes": fhashes, "adapter_dir": str(adapter), "mode": s.final,
                                           "wall_time_s": round(time.time() - t0, 3)})
    return adapter, in_memory, fhashes


def _export_stage(cfg, frame: pd.DataFrame, adapter: Path, holder: list, fhashes: dict[str, str], *,
                  force: bool) -> Path:
    """References from the trained model(s), merged (or base + adapter) export, self-check (student.export_stage).
    ``holder[0]``: (model, tokenizer) or None; taken out here so the trained model can be freed before the merge."""
    from arena_kd.student.export_stage import export_ensemble, export_student

    in_memory = holder.pop() if holder else None
    if cfg.student.final == "fold_ensemble":
        return export_ensemble(cfg, frame, fhashes, force=force)
    return export_student(cfg, frame, adapter, in_memory, fhashes, force=force)


def _prior_matched(d: DistillConfig, train_df: pd.DataFrame, what: str) -> pd.DataFrame:
    """``train_df`` with prior-matched soft labels (student.distill.prior_match; student/prior_match.py)."""
    if d.prior_match == "off" or not d.uses_teachers:
        return train_df
    from arena_kd.student.prior_match import describe, match_frame

    matched, summary = match_frame(train_df, d.prior_match, d.prior_match_rows)
    print(f"[student] {what}: prior-matched soft labels ({d.prior_match}): {describe(summary)}")
    return matched


def _teacher_weights(d: DistillConfig, soft: SoftLabels) -> list[float] | None:
    """Per-teacher weights of the soft terms (per_teacher_weights; None = equal)."""
    if not d.per_teacher or d.per_teacher_weights == "equal":
        return None
    if d.per_teacher_weights == "combine":
        if soft.teacher_weights is None:
            raise UserError(f"{soft.path}: per_teacher_weights=combine but the sidecar has no weights for "
                            f"{', '.join(soft.teacher_names)}")
        return soft.teacher_weights
    missing = [n for n in soft.teacher_names if n not in d.teacher_weights]
    if missing:
        raise UserError(f"student.distill.teacher_weights: no weight for teacher '{missing[0]}' of {soft.path}")
    return [float(d.teacher_weights[n]) for n in soft.teacher_names]


def make_loss(d: DistillConfig, weights: list[float] | None, unlabelled_weight: float = 1.0):
    """The student's loss_fn for ``student.distill`` (student/losses.py): the alpha mix or the winners' mix."""
    if d.mix == "winners":
        return WinnersLoss(teacher_weights=weights, unlabelled_weight=unlabelled_weight)
    return DistillationLoss(alpha=d.alpha, temperature=d.temperature, label_smoothing=d.label_smoothing,
                            teacher_weights=weights, cosine_weight=d.cosine_weight,
                            unlabelled_weight=unlabelled_weight)


def run_distill(cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    """k-fold student OOF (resumable per fold) → final student → export. Returns a summary dict."""
    t0 = time.time()
    s = cfg.student
    d = s.distill
    dist.start(cfg.collective_timeout_s)  # multi-process launch: the group is up before the first write
    with dist.main_first():  # rank 0 creates the folds file, the others read it
        data = load_training_data(cfg)
    sdir = student_dir(cfg)
    sdir.mkdir(parents=True, exist_ok=True)

    soft = None
    soft_path = cfg.soft_labels_path()
    if d.uses_teachers or soft_path.is_file():
        soft = load_soft_labels(soft_path, data.frame["id"])
    frame = data.frame
    weights = None
    if d.uses_teachers:
        frame = attach_teacher_logits(frame, soft, d.per_teacher)
        weights = _teacher_weights(d, soft)
    # the config check cannot see a file made under another config
    if soft is not None and d.uses_teachers and d.temperature != 1.0:
        tc = float(soft.temperature)
        if tc != 1.0:
            raise UserError(f"{soft.path}: soft labels already tempered at T={tc:g} (teachers.combine.temperature) "
                            f"and student.distill.temperature={d.temperature:g}: the temperatures would compound; "
                            "set one of them to 1")
    extra = None
    if s.extra_pairs.enabled and d.uses_teachers:
        extra = load_extra_pairs(cfg, data, soft, d.per_teacher)
    elif s.extra_pairs.enabled:
        print("[student] extra pairs: not used by a hard-label student (alpha=0: they have no hard label)")
    loss_fn = make_loss(d, weights, s.extra_pairs.weight if extra is not None else 1.0)
    hashes = {
        "config": student_config_hash(cfg),
        "data": data.data_hash,
        "folds": data.folds_hash,
        "soft_labels": soft.file_hash if (soft is not None and d.uses_teachers) else "unused",
    }
    if extra is not None:  # which extra rows, their pseudo-labels and folds (absent without: older runs stay valid)
        hashes["extra_pairs"] = extra.hash
    held = heldout_rows(cfg, data)
    if held is not None:  # which rows the fold students also predict (changes the fold files' content)
        hashes["heldout"] = json_hash(sorted(held["id"].astype(str)))
    if d.nested and d.uses_teachers and s.oof:
        from arena_kd.common.io import file_hash
        from arena_kd.kfold.soft_labels import nested_soft_labels_path

        paths = [nested_soft_labels_path(soft_path, int(k)) for k in sorted(data.frame["fold"].unique())]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: student.distill.nested=true needs the nested soft labels; "
                            "set teachers.nested=true and run `arena-kd teachers`")
        hashes["nested_soft_labels"] = json_hash([file_hash(p) for p in paths])
    summary: dict[str, Any] = {"hashes": hashes}
    fault = FaultInjector()
    if s.oof:
        oof = _oof_stage(cfg, data, frame, soft, hashes, loss_fn, force=force, fault=fault, extra=extra)
        summary["oof_rows"] = len(oof)
    if s.final != "none":
        adapter, in_memory, fhashes = _final_stage(cfg, frame, hashes, loss_fn, force=force, extra=extra)
        holder = [in_memory]  # the export stage takes the trained model out of here and frees it
        del in_memory
        summary["export_dir"] = str(main_write(_export_stage, cfg, frame, adapter, holder, fhashes, force=force))
    main_write(write_resolved, cfg, sdir)  # once the stage is accepted and done (see teachers.run)
    print(f"[student] done in {time.time() - t0:.1f}s")
    return summary
