"""`arena-kd all` / `make all`: every stage in order, then a report of what each stage bought.

Stages: teachers → distill → distill with α=0 (the hard-label student, for comparison) → stack →
submission → report. The report evaluates every stage on the held-out test labels
(``data.test_labels``) when the config names them: uniform, class prior, a length-only LightGBM,
each teacher and the teacher ensemble (fold models averaged over the test rows, written by the
teachers stage when ``data.extra`` holds the test file and ``teachers.predict_extra`` is on), the
hard-label and the distilled student (swap TTA), the stacker before and after temperature, and
the submission file itself. Wall time and peak memory of every stage are recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.config import PipelineConfig, write_resolved
from arena_kd.io import atomic_write_json, atomic_write_text, read_keyed_table
from arena_kd.metrics import accuracy, log_loss, softmax
from arena_kd.profiling import StageRecord, measure

HARD_STUDENT_DIR = "ablation_hard_student"
UNIFORM_LOG_LOSS = float(np.log(3.0))


def hard_student_config(cfg: PipelineConfig) -> PipelineConfig:
    """The same student trained on hard labels only (α=0), final model only, same folds and data."""
    d = cfg.to_dict()
    d["workdir"] = str(cfg.workdir_path / HARD_STUDENT_DIR)
    d["folds"]["file"] = str(cfg.folds_path())
    d["student"]["distill"]["alpha"] = 0.0
    d["student"]["oof"] = False
    if d["student"]["final"] == "fold_soup":  # fold soup needs fold adapters, which oof=False does not train
        d["student"]["final"] = "full"
    return PipelineConfig.model_validate(d)


def run_pipeline(cfg: PipelineConfig, force: bool = False, hard_student: bool = True) -> dict[str, Any]:
    """Run every stage, time each one, and write <workdir>/report.md + report.json."""
    from stacking.run import run_stacking
    from student.run import run_distill
    from submission.run import run_submission
    from teachers.run import run_teachers

    cfg.workdir_path.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, cfg.workdir_path)
    records: list[StageRecord] = []

    def stage(name: str, fn, *args, **kw):
        print(f"\n===== {name} =====", flush=True)
        with measure(name) as rec:
            out = fn(*args, **kw)
        records.append(rec)
        print(f"===== {name}: {rec.seconds:.1f}s, peak RSS {rec.peak_rss_mib:.0f} MiB", flush=True)
        return out

    if cfg.teachers.models:
        stage("teachers", run_teachers, cfg, force=force)
    stage("distill", run_distill, cfg, force=force)
    hard_cfg = None
    if hard_student and cfg.data.test_labels and cfg.student.distill.alpha > 0:
        hard_cfg = hard_student_config(cfg)
        stage("distill (hard labels, alpha=0)", run_distill, hard_cfg, force=force)
    if cfg.stacking.enabled:
        stage("stack", run_stacking, cfg, force=force)
    stage("submission", run_submission, cfg)

    rows: list[dict[str, Any]] = []
    if cfg.data.test_labels:
        with measure("report (test-set evaluation)") as rec:
            rows = evaluate_stages_on_test(cfg, hard_cfg)
        records.append(rec)
    report = write_report(cfg, rows, records)
    return report


# --------------------------------------------------------------------------- evaluation


def _test_frame(cfg: PipelineConfig) -> tuple[pd.DataFrame, np.ndarray]:
    from data.readers import read_labels, read_pairs

    test = read_pairs(cfg.data.test)
    labels = read_labels(cfg.data.test_labels)
    merged = test[["id"]].merge(labels, on="id", how="left")
    if merged["label"].isna().any():
        missing = merged.loc[merged["label"].isna(), "id"].head(3).tolist()
        from arena_kd.errors import UserError

        raise UserError(f"{cfg.data.test_labels}: {int(merged['label'].isna().sum())} test ids have no label (e.g. {missing})")
    return test, merged["label"].to_numpy(dtype=np.int64)


def _row(name: str, labels: np.ndarray, probs: np.ndarray | None, note: str = "") -> dict[str, Any]:
    if probs is None:
        return {"stage": name, "log_loss": None, "accuracy": None, "note": note}
    return {"stage": name, "log_loss": log_loss(labels, probs), "accuracy": accuracy(labels, probs), "note": note}


def _train_labels(cfg: PipelineConfig) -> pd.DataFrame:
    from teachers.training_data import load_training_data

    return load_training_data(cfg).frame


def _length_features(df: pd.DataFrame) -> pd.DataFrame:
    """Length-only baseline features: characters and words of prompt/A/B, A−B differences and log-ratios."""
    out = {}
    for col in ("prompt", "response_a", "response_b"):
        text = df[col].map(lambda turns: "\n".join(t for t in (turns or []) if isinstance(t, str)))
        out[f"{col}_chars"] = text.str.len().to_numpy(dtype=np.float64)
        out[f"{col}_words"] = text.str.split().str.len().fillna(0).to_numpy(dtype=np.float64)
    f = pd.DataFrame(out)
    for unit in ("chars", "words"):
        a, b = f[f"response_a_{unit}"], f[f"response_b_{unit}"]
        f[f"diff_{unit}"] = a - b
        f[f"logratio_{unit}"] = np.log1p(a) - np.log1p(b)
    return f


def length_only_lgbm(train: pd.DataFrame, test: pd.DataFrame, seed: int) -> np.ndarray:
    """The 'longer answer wins' baseline: LightGBM on length features only, trained on both orientations."""
    import lightgbm as lgb

    from data.schema import swap_frame

    both = pd.concat([train, swap_frame(train)], ignore_index=True)
    x, y = _length_features(both), both["label"].to_numpy(dtype=np.int64)
    rng = np.random.default_rng(seed)
    valid = rng.random(len(train)) < 0.15
    valid = np.concatenate([valid, valid])  # a row and its swap stay on the same side
    params = {"objective": "multiclass", "num_class": 3, "learning_rate": 0.05, "num_leaves": 7,
              "min_data_in_leaf": 20, "verbose": -1, "seed": seed, "num_threads": 2}
    dtrain = lgb.Dataset(x[~valid], y[~valid])
    dvalid = lgb.Dataset(x[valid], y[valid], reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=500, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(30, verbose=False)])
    p = booster.predict(_length_features(test), num_iteration=booster.best_iteration)
    ps = booster.predict(_length_features(swap_frame(test)), num_iteration=booster.best_iteration)
    return (p + ps[:, [1, 0, 2]]) / 2


def _teacher_test_probs(cfg: PipelineConfig, ids: pd.Series) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Each teacher's test probabilities (fold models averaged, from the teachers' extra predictions) and the ensemble."""
    tdir = cfg.workdir_path / "teachers"
    per: dict[str, np.ndarray] = {}
    for t in cfg.teachers.models:
        path = tdir / t.name / "extra.parquet"
        if not path.is_file():
            continue
        df, _ = read_keyed_table(path)
        df = df.set_index("id").reindex(ids.astype(str))
        if df[["logit_a", "logit_b", "logit_tie"]].isna().any().any():
            continue
        per[t.name] = softmax(df[["logit_a", "logit_b", "logit_tie"]].to_numpy())
    ens = None
    path = tdir / "soft_labels_extra.parquet"
    if path.is_file():
        df, _ = read_keyed_table(path)
        df = df.set_index("id").reindex(ids.astype(str))
        if not df[["logit_a", "logit_b", "logit_tie"]].isna().any().any():
            ens = softmax(df[["logit_a", "logit_b", "logit_tie"]].to_numpy())
    return per, ens


def _student_test(export_dir: Path, test: pd.DataFrame, cfg: PipelineConfig) -> dict[str, np.ndarray] | None:
    """Student logits on the test rows, both orientations (as the submission computes them)."""
    if not export_dir.is_dir():
        return None
    from llm.predict import predict_tta
    from student.export import load_export

    model, tokenizer, settings = load_export(export_dir, quantization="none", dtype="auto")
    r = settings["render"]
    p = cfg.student.predict
    out = predict_tta(model, tokenizer, test, max_length=r["max_length"], truncation=r["truncation"],
                      prompt_fraction=r["prompt_fraction"], template=r.get("template", "blocks"),
                      tokens_per_batch=p.tokens_per_batch,
                      max_batch_size=p.max_batch_size)
    del model
    return out


def evaluate_stages_on_test(cfg: PipelineConfig, hard_cfg: PipelineConfig | None) -> list[dict[str, Any]]:
    """Log loss and accuracy of every stage on the held-out test labels."""
    test, y = _test_frame(cfg)
    train = _train_labels(cfg)
    prior = np.bincount(train["label"].to_numpy(dtype=np.int64), minlength=3) / len(train)
    rows = [
        _row("uniform (1/3 each)", y, np.full((len(y), 3), 1 / 3)),
        _row("class prior (train frequencies)", y, np.tile(prior, (len(y), 1))),
        _row("length-only LightGBM", y, length_only_lgbm(train, test, cfg.seed)),
    ]
    per, ens = _teacher_test_probs(cfg, test["id"])
    for t in cfg.teachers.models:
        rows.append(_row(f"teacher {t.name}", y, per.get(t.name), "" if t.name in per else "no test predictions"))
    if cfg.teachers.models:
        rows.append(_row("teacher ensemble", y, ens, "" if ens is not None else "no test predictions"))
    if hard_cfg is not None:
        hard = _student_test(hard_cfg.workdir_path / "student" / "export", test, cfg)
        rows.append(_row("student, hard labels only (alpha=0), TTA", y, None if hard is None else softmax(hard["avg"])))
    student = _student_test(cfg.workdir_path / "student" / "export", test, cfg)
    if student is not None:
        rows.append(_row("student, distilled, no TTA", y, softmax(student["orig"])))
        rows.append(_row("student, distilled, TTA", y, softmax(student["avg"])))
    rows.extend(_stacker_rows(cfg, test, y, student))
    sub_path = Path(cfg.submission.out) if cfg.submission.out else cfg.workdir_path / "submission.csv"
    if sub_path.is_file():
        sub = pd.read_csv(sub_path, dtype={"id": str}).set_index("id").reindex(test["id"].astype(str))
        rows.append(_row("submission.csv (final)", y, sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()))
    return rows


def _stacker_rows(cfg: PipelineConfig, test: pd.DataFrame, y: np.ndarray, student: dict | None) -> list[dict]:
    stack_dir = cfg.workdir_path / "stacking"
    if not cfg.stacking.enabled or not stack_dir.is_dir():
        return []
    from stacking.predict import load_stacker

    stacker = load_stacker(stack_dir)
    stud = None if student is None else {"orig": student["orig"], "swap": student["swap"]}
    rows = []
    if stud is not None:
        rows.append(_row("stacker (before temperature)", y, stacker.predict(test, stud, calibrate=False)))
        rows.append(_row("stacker + temperature", y, stacker.predict(test, stud, calibrate=True)))
    rows.append(_row("features-only stacker + temperature (fallback)", y, stacker.predict_features_only(test)))
    return rows


# --------------------------------------------------------------------------- report


def _fmt(v: float | None, nd: int = 4) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | log loss | accuracy | note |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {_fmt(r['log_loss'])} | {_fmt(r['accuracy'], 3)} | {r.get('note', '')} |")
    return "\n".join(lines)


def _verdicts(rows: list[dict[str, Any]]) -> list[str]:
    by = {r["stage"]: r["log_loss"] for r in rows if r["log_loss"] is not None}

    def cmp(a: str, b: str, what: str) -> str | None:
        if a not in by or b not in by:
            return None
        ok = by[a] < by[b]
        return f"- {what}: {'yes' if ok else 'NO'} ({a} {by[a]:.4f} vs {b} {by[b]:.4f})"

    checks = [
        cmp("student, distilled, TTA", "student, hard labels only (alpha=0), TTA", "distilled student beats the hard-label student"),
        cmp("stacker + temperature", "student, distilled, TTA", "stacker + temperature beats the student"),
        cmp("submission.csv (final)", "length-only LightGBM", "final submission beats the length-only LightGBM"),
    ]
    return [c for c in checks if c]


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in rows if r["log_loss"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rs) + 1.2))
    ax.barh([r["stage"] for r in rs][::-1], [r["log_loss"] for r in rs][::-1], color="#4C72B0")
    ax.axvline(UNIFORM_LOG_LOSS, color="grey", ls="--", lw=1)
    ax.set_xlabel("log loss on held-out test labels (lower is better)")
    lo = min(r["log_loss"] for r in rs)
    ax.set_xlim(max(0.0, lo - 0.1), max(r["log_loss"] for r in rs) + 0.02)
    fig.tight_layout()
    from arena_kd.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(cfg: PipelineConfig, rows: list[dict[str, Any]], records: list[StageRecord]) -> dict[str, Any]:
    out = cfg.workdir_path
    stages = [r.as_dict() for r in records]
    parts = [f"# arena-kd report — `{out}`\n"]
    if rows:
        parts.append("## Held-out test set (never used for fitting)\n")
        parts.append(format_table(rows) + "\n")
        verdicts = _verdicts(rows)
        if verdicts:
            parts.append("### Did each stage pay for itself?\n\n" + "\n".join(verdicts) + "\n")
        _plot(rows, out / "report_logloss.png")
        parts.append("![log loss per stage](report_logloss.png)\n")
    parts.append("## Wall time and peak memory per stage\n")
    lines = ["| stage | wall time (s) | peak RSS (MiB) |", "|---|---|---|"]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_rss_mib']:.0f} |")
    parts.append("\n".join(lines) + "\n")
    stack_report = out / "stacking" / "report.md"
    if stack_report.is_file():
        parts.append("Stacker details (cross-validated on the training folds): `stacking/report.md`.\n")
    text = "\n".join(parts)
    atomic_write_text(out / "report.md", text)
    report = {"rows": rows, "stages": stages}
    atomic_write_json(out / "report.json", report)
    print("\n" + text)
    return report
