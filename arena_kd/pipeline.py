"""`arena-kd all` / `make all`: every stage in order, then a report of what each stage bought.

Stages: teachers → distill → distill with α=0 (the hard-label student, for comparison) → the nested soft-label
ablation's fold students (when teachers.nested) → stack (+ the ablation's stack) → submission → report. The report
evaluates every stage on the held-out test labels (``data.test_labels``) when the config names them
(:mod:`arena_kd.heldout`) and is written by :mod:`arena_kd.report`. Wall time and peak memory of every stage are
recorded.
"""

from __future__ import annotations

from typing import Any

from arena_kd.common.config import PipelineConfig, write_resolved
from arena_kd.common.profiling import StageRecord, measure
from arena_kd.heldout import evaluate_stages_on_test
from arena_kd.report import write_report

HARD_STUDENT_DIR = "ablation_hard_student"


def hard_student_config(cfg: PipelineConfig) -> PipelineConfig:
    """The same student trained on hard labels only (α=0, no extra pairs), final model only (with final=fold_ensemble:
    its fold students, the final model there), same folds and data."""
    d = cfg.to_dict()
    d["workdir"] = str(cfg.workdir_path / HARD_STUDENT_DIR)
    d["folds"]["file"] = str(cfg.folds_path())
    d["student"]["distill"].update(alpha=0.0, mix="alpha", cosine_weight=0.0,  # no soft term of any mix
                                  prior_match="off", prior_match_rows=0.0)  # (acts on soft labels only)
    d["student"]["extra_pairs"]["enabled"] = False  # unlabelled rows teach only through soft labels
    # a fold ensemble's twin is a fold ensemble too (same models at test); otherwise only the final model is needed
    d["student"]["oof"] = d["student"]["final"] == "fold_ensemble"
    if d["student"]["final"] == "fold_soup":  # fold soup needs fold adapters, which oof=False does not train
        d["student"]["final"] = "full"
    return PipelineConfig.model_validate(d)


NESTED_DIR = "ablation_nested_soft_labels"


def nested_ablation_config(cfg: PipelineConfig) -> PipelineConfig:
    """The same fold students trained on the other kind of soft labels (nested if the main run uses plain, and back),
    OOF only (the final student does not depend on it), same folds, data and teachers' files."""
    d = cfg.to_dict()
    d["workdir"] = str(cfg.workdir_path / NESTED_DIR)
    d["folds"]["file"] = str(cfg.folds_path())
    d["student"]["distill"]["soft_labels"] = str(cfg.soft_labels_path())
    d["student"]["distill"]["nested"] = not cfg.student.distill.nested
    d["student"]["final"] = "none"
    return PipelineConfig.model_validate(d)


def run_pipeline(cfg: PipelineConfig, force: bool = False, hard_student: bool = True) -> dict[str, Any] | None:
    """Run every stage, time each one, and write <workdir>/report.md + report.json.

    Under a multi-process launch every process trains (teachers, students); then the other processes leave and the
    main process runs stacking, submission and report alone (``kfold.dist.alone``: CPU stages, and the submission's
    time-budget decisions taken by one clock cannot drift apart between ranks). Those ranks return None.
    """
    from arena_kd.kfold import dist
    from arena_kd.stacking.run import run_stacking
    from arena_kd.student.run import run_distill
    from arena_kd.submission.run import run_submission
    from arena_kd.teachers.run import run_teachers

    cfg.workdir_path.mkdir(parents=True, exist_ok=True)
    dist.start(cfg.collective_timeout_s)
    records: list[StageRecord] = []

    def stage(name: str, fn, *args, **kw):
        print(f"\n===== {name} =====", flush=True)
        with dist.stage_guard(name), measure(name) as rec:
            out = fn(*args, **kw)
        records.append(rec)
        print(f"===== {name}: {rec.seconds:.1f}s, peak RSS {rec.peak_rss_mib:.0f} MiB", flush=True)
        return out

    # the model stages: every process of a launch takes part
    if cfg.teachers.models:
        stage("teachers", run_teachers, cfg, force=force)
    stage("distill", run_distill, cfg, force=force)
    hard_cfg = None
    if hard_student and cfg.data.test_labels and cfg.student.distill.uses_teachers:
        hard_cfg = hard_student_config(cfg)
        stage("distill (hard labels, alpha=0)", run_distill, hard_cfg, force=force)
    nested_cfg, other = None, ""
    if cfg.teachers.nested and cfg.teachers.models and cfg.student.oof and cfg.student.distill.uses_teachers:
        nested_cfg = nested_ablation_config(cfg)
        other = "nested" if nested_cfg.student.distill.nested else "plain"
        stage(f"distill (fold students on {other} soft labels)", run_distill, nested_cfg, force=force)
    if not dist.is_main_process():
        print(f"[rank {dist.rank()}] model stages done; the main process stacks, submits and reports alone", flush=True)
        return None

    with dist.alone():
        if cfg.stacking.enabled:
            stage("stack", run_stacking, cfg, force=force)
            if nested_cfg is not None:
                stage(f"stack ({other} soft labels)", run_stacking, nested_cfg, force=force)
        stage("submission", run_submission, cfg)

        ev = None
        if cfg.data.test_labels:
            with measure("report (test-set evaluation)") as rec:
                ev = evaluate_stages_on_test(cfg, hard_cfg, nested_cfg)
            records.append(rec)
        report = write_report(cfg, ev, records, nested_cfg, hard_cfg)
        write_resolved(cfg, cfg.workdir_path)  # once every stage accepted this config (a refused resume writes nothing)
        return report
