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

from arena_kd.common.config import PipelineConfig, write_resolved
from arena_kd.common.io import atomic_write_json, atomic_write_text, read_keyed_table
from arena_kd.common.metrics import softmax
from arena_kd.common.profiling import StageRecord, measure
from arena_kd.heldout_report import Evaluation, format_table, format_verdicts

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


def run_pipeline(cfg: PipelineConfig, force: bool = False, hard_student: bool = True) -> dict[str, Any]:
    """Run every stage, time each one, and write <workdir>/report.md + report.json."""
    from arena_kd.stacking.run import run_stacking
    from arena_kd.student.run import run_distill
    from arena_kd.submission.run import run_submission
    from arena_kd.teachers.run import run_teachers

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
    nested_cfg = None
    if cfg.teachers.nested and cfg.teachers.models and cfg.student.oof and cfg.student.distill.alpha > 0:
        nested_cfg = nested_ablation_config(cfg)
        other = "nested" if nested_cfg.student.distill.nested else "plain"
        stage(f"distill (fold students on {other} soft labels)", run_distill, nested_cfg, force=force)
        if cfg.stacking.enabled:
            stage(f"stack ({other} soft labels)", run_stacking, nested_cfg, force=force)
    stage("submission", run_submission, cfg)

    ev = None
    if cfg.data.test_labels:
        with measure("report (test-set evaluation)") as rec:
            ev = evaluate_stages_on_test(cfg, hard_cfg, nested_cfg)
        records.append(rec)
    report = write_report(cfg, ev, records, nested_cfg)
    return report


# --------------------------------------------------------------------------- evaluation


def _test_frame(cfg: PipelineConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """Test pairs, their labels, and (as ``test['source']``) each row's source from the labels file when it has one."""
    from arena_kd.data.readers import read_labels, read_pairs

    test = read_pairs(cfg.data.test)
    labels = read_labels(cfg.data.test_labels)
    merged = test[["id"]].merge(labels, on="id", how="left")
    if merged["label"].isna().any():
        missing = merged.loc[merged["label"].isna(), "id"].head(3).tolist()
        from arena_kd.common.errors import UserError

        raise UserError(f"{cfg.data.test_labels}: {int(merged['label'].isna().sum())} test ids have no label (e.g. {missing})")
    test = test.drop(columns=["source"])
    src = _label_sources(cfg.data.test_labels)
    test["source"] = test["id"].map(src) if src is not None else None
    return test, merged["label"].to_numpy(dtype=np.int64)


def _label_sources(path: str) -> dict[str, str] | None:
    """id -> source from the labels file's `source` column (None when it has none)."""
    head = pd.read_csv(path, nrows=0)
    if "source" not in head.columns:
        return None
    df = pd.read_csv(path, usecols=["id", "source"], dtype=str, keep_default_na=False)
    return dict(zip(df["id"].str.strip(), df["source"].str.strip()))


def _train_labels(cfg: PipelineConfig) -> pd.DataFrame:
    """Every labelled training row (the stacker's rows, data.max_rows or not), with its source."""
    from arena_kd.data.readers import read_pairs

    df = read_pairs(cfg.data.train, fmt=cfg.data.format, seed=cfg.seed)
    return df[df["label"].notna()].reset_index(drop=True)


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

    from arena_kd.data.schema import swap_frame

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
    from arena_kd.llm.export import load_export
    from arena_kd.llm.predict import predict_tta

    model, tokenizer, settings = load_export(export_dir, quantization="none", dtype="auto")
    r = settings["render"]
    p = cfg.student.predict
    out = predict_tta(model, tokenizer, test, max_length=r["max_length"], truncation=r["truncation"],
                      prompt_fraction=r["prompt_fraction"], template=r.get("template", "blocks"),
                      tokens_per_batch=p.tokens_per_batch,
                      max_batch_size=p.max_batch_size)
    del model
    return out


def evaluate_stages_on_test(cfg: PipelineConfig, hard_cfg: PipelineConfig | None, nested_cfg: PipelineConfig | None = None) -> Evaluation:
    """Probabilities of every stage on the held-out test rows (see heldout_report for the statistics)."""
    from arena_kd.data.folds import prompt_groups
    from arena_kd.stacking.candidates import pooled_prior

    test, y = _test_frame(cfg)
    train = _train_labels(cfg)
    sources = test["source"].to_numpy(dtype=object) if test["source"].notna().all() else None
    ev = Evaluation(labels=y, groups=prompt_groups(test), sources=sources, seed=cfg.seed)
    n = len(y)
    ev.add("uniform (1/3 each)", np.full((n, 3), 1 / 3))
    ev.add("class prior (train frequencies)", np.tile(pooled_prior(train["label"].to_numpy(dtype=np.int64)), (n, 1)),
           f"A/B pooled, {len(train)} training rows")
    stacker = _load_stacker(cfg)
    if stacker is not None and stacker.models.get("length_only") is not None:
        ev.add("length-only LightGBM", stacker.predict_model(test, "length_only"), f"the stacker's length-only candidate ({stacker.manifest['rows']} rows)")
    else:
        ev.add("length-only LightGBM", length_only_lgbm(train, test, cfg.seed), f"{len(train)} training rows")
    per, ens = _teacher_test_probs(cfg, test["id"])
    for t in cfg.teachers.models:
        ev.add(f"teacher {t.name}", per.get(t.name), "" if t.name in per else "no test predictions")
    if cfg.teachers.models:
        ev.add("teacher ensemble", ens, "" if ens is not None else "no test predictions")
    if hard_cfg is not None:
        hard = _student_test(hard_cfg.workdir_path / "student" / "export", test, cfg)
        ev.add("student, hard labels only (alpha=0), TTA", None if hard is None else softmax(hard["avg"]))
    student = _student_test(cfg.workdir_path / "student" / "export", test, cfg)
    if student is not None:
        ev.add("student, distilled, no TTA", softmax(student["orig"]))
        ev.add("student, distilled, TTA", softmax(student["avg"]))
    if stacker is not None:
        _stacker_rows(ev, stacker, test, student)
    if nested_cfg is not None and student is not None and stacker is not None:
        other = _load_stacker(nested_cfg)
        if other is not None:
            stud = {"orig": student["orig"], "swap": student["swap"]}
            mine, theirs = ("nested", "plain") if cfg.student.distill.nested else ("plain", "nested")
            ev.add(f"stacker as selected, fold students on {mine} soft labels", stacker.predict(test, stud), "this run")
            ev.add(f"stacker as selected, fold students on {theirs} soft labels", other.predict(test, stud), "ablation")
    sub_path = Path(cfg.submission.out) if cfg.submission.out else cfg.workdir_path / "submission.csv"
    if sub_path.is_file():
        sub = pd.read_csv(sub_path, dtype={"id": str}).set_index("id").reindex(test["id"].astype(str))
        ev.add(FINAL, sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy())
    return ev


FINAL = "submission.csv (final)"
STACKER_LABELS = {
    "stacker": "stacker + temperature", "stacker_single": "stacker, one orientation + temperature",
    "features_only": "features-only stacker + temperature (fallback)", "student": "student TTA + temperature (stacker candidate)",
    "student_single": "student one orientation + temperature (stacker candidate)",
}


def _load_stacker(cfg: PipelineConfig):
    stack_dir = cfg.workdir_path / "stacking"
    if not cfg.stacking.enabled or not (stack_dir / "stacker.json").is_file():
        return None
    from arena_kd.blend.stacker import load_stacker

    return load_stacker(stack_dir)


def _stacker_rows(ev: Evaluation, stacker, test: pd.DataFrame, student: dict | None) -> None:
    stud = None if student is None else {"orig": student["orig"], "swap": student["swap"]}
    sel = stacker.selection
    for name, label in STACKER_LABELS.items():
        model = stacker.models.get(name)
        if model is None or (model.kind != "lightgbm" or any(c.startswith("stu_") for c in model.features)) and stud is None:
            continue
        chosen = [m for m, w in sel.items() if w == name and m != "short"]
        note = f"selected for student mode {', '.join(chosen)}" if chosen else ""
        if name == "stacker" and stud is not None:
            ev.add("stacker (before temperature)", stacker.predict_model(test, name, stud, calibrate=False))
        ev.add(label, stacker.predict_model(test, name, stud), note)


# --------------------------------------------------------------------------- report


def _verdicts(ev: Evaluation) -> list[dict[str, Any]]:
    """Every 'did it pay for itself' line, with the paired-difference interval (heldout_report.Evaluation.compare)."""
    checks = [
        ("student, distilled, TTA", "student, hard labels only (alpha=0), TTA", "distilled student beats the hard-label student"),
        ("student, distilled, TTA", "student, distilled, no TTA", "TTA beats one orientation"),
        ("stacker + temperature", "student, distilled, TTA", "stacker + temperature beats the student"),
        ("stacker + temperature", "stacker (before temperature)", "temperature improves the stacker"),
        ("stacker + temperature", "features-only stacker + temperature (fallback)", "the student's logits improve the stacker"),
        (FINAL, "length-only LightGBM", "final submission beats the length-only LightGBM"),
        (FINAL, "class prior (train frequencies)", "final submission beats the class prior"),
        (FINAL, "uniform (1/3 each)", "final submission beats uniform"),
        ("stacker as selected, fold students on nested soft labels", "stacker as selected, fold students on plain soft labels",
         "nested teacher soft labels beat plain ones (through the stacker)"),
    ]
    out = [v for a, b, what in checks if (v := ev.compare(a, b, what)) is not None]
    for src, m in ev.source_masks().items():
        for b, what in (("uniform (1/3 each)", "final submission beats uniform"), ("length-only LightGBM", "final submission beats the length-only LightGBM")):
            v = ev.compare(FINAL, b, what, mask=m, scope=f"source {src}")
            if v is not None:
                out.append(v)
    return out


def _per_source(ev: Evaluation, train: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Per test source: uniform, class prior, the source's own training prior (an oracle: test rows carry no source),
    length-only, students, stacker candidates, final."""
    extra = {}
    if train is not None and ev.sources is not None:
        own = {}
        for src, m in ev.source_masks().items():
            y = train.loc[train["source"] == src, "label"].to_numpy(dtype=np.int64)
            if len(y):
                c = np.bincount(y, minlength=3)[:3] + 1.0
                own[src] = np.tile(c / c.sum(), (int(m.sum()), 1))
        extra["class prior of this source (oracle)"] = own
    stages = [s for s in ev.probs if not s.startswith("teacher ")]
    return ev.per_source_rows(stages, extra)


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
    from arena_kd.common.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def nested_oof_comparison(cfg: PipelineConfig, nested_cfg: PipelineConfig) -> dict[str, Any] | None:
    """Student OOF log loss with plain vs nested teacher soft labels on the same rows, paired, prompt-bootstrap interval."""
    from arena_kd.common.metrics import log_loss_difference
    from arena_kd.data.folds import prompt_groups
    from arena_kd.kfold.training_data import load_training_data

    paths = {nested_cfg.student.distill.nested: nested_cfg.workdir_path / "student" / "oof.parquet",
             cfg.student.distill.nested: cfg.workdir_path / "student" / "oof.parquet"}
    if not all(p.is_file() for p in paths.values()):
        return None
    frame = load_training_data(cfg).frame
    y = frame["label"].to_numpy(dtype=np.int64)
    probs = {}
    for is_nested, p in paths.items():
        df = frame[["id"]].merge(read_keyed_table(p)[0], on="id", how="left")
        probs[is_nested] = softmax(df[["logit_a", "logit_b", "logit_tie"]].to_numpy(dtype=np.float64))
    d = log_loss_difference(y, probs[True], probs[False], prompt_groups(frame), seed=cfg.seed)
    from arena_kd.common.metrics import log_loss

    return {"rows": len(y), "plain": log_loss(y, probs[False]), "nested": log_loss(y, probs[True]),
            "diff": d["mean"], "lo": d["lo"], "hi": d["hi"]}


def write_report(cfg: PipelineConfig, ev: Evaluation | None, records: list[StageRecord], nested_cfg: PipelineConfig | None = None) -> dict[str, Any]:
    out = cfg.workdir_path
    stages = [r.as_dict() for r in records]
    parts = [f"# arena-kd report — `{out}`\n"]
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    if ev is not None:
        rows = ev.rows()
        selection = None
        sj = out / "stacking" / "stacker.json"
        if sj.is_file():
            selection = json.loads(sj.read_text()).get("selection")
        parts.append("## Held-out test set (never used for fitting)\n")
        parts.append(f"{len(ev.labels)} rows, {len(np.unique(ev.groups))} distinct prompts; 95% intervals: bootstrap over prompts.\n")
        parts.append(format_table(rows) + "\n")
        if selection:
            parts.append("What the submission uses, chosen by out-of-fold log loss on the training rows (`stacking/report.md`): "
                         + ", ".join(f"student mode `{m}` → `{w}`" for m, w in selection.items()) + ".\n")
        verdicts = _verdicts(ev)
        if verdicts:
            parts.append("### Did each stage pay for itself?\n\nA yes/NO only when the 95% interval of the paired difference excludes zero.\n\n"
                         + format_verdicts(verdicts) + "\n")
        train = _train_labels(cfg) if ev.sources is not None else None
        per_source = _per_source(ev, train)
        if per_source:
            parts.append("### Per source\n\n" + format_table(per_source) + "\n")
        _plot(rows, out / "report_logloss.png")
        parts.append("![log loss per stage](report_logloss.png)\n")
        report.update({"verdicts": verdicts, "per_source": per_source, "selection": selection})
    if nested_cfg is not None:
        cmp = nested_oof_comparison(cfg, nested_cfg)
        if cmp is not None:
            resolved = cmp["hi"] < 0 or cmp["lo"] > 0
            parts.append("### Nested teacher soft labels (fold k's student taught by teachers that never saw fold k)\n\n"
                         f"Student OOF log loss on the {cmp['rows']} LLM rows: plain {cmp['plain']:.4f}, nested {cmp['nested']:.4f}; "
                         f"nested minus plain {cmp['diff']:+.4f}, 95% interval [{cmp['lo']:+.4f}, {cmp['hi']:+.4f}] "
                         f"({'resolved' if resolved else 'not resolved at this size'}; the plain OOF is expected to look slightly better "
                         "because its teachers saw the scored fold). The held-out test difference through the stacker is the "
                         "'nested teacher soft labels' line above. The default stays the cheaper plain labels unless the test "
                         "interval shows nested ahead.\n")
            report["nested_oof"] = cmp
    parts.append("## Wall time and peak memory per stage\n")
    lines = ["| stage | wall time (s) | peak RSS (MiB) |", "|---|---|---|"]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_rss_mib']:.0f} |")
    parts.append("\n".join(lines) + "\n")
    stack_report = out / "stacking" / "report.md"
    if stack_report.is_file():
        parts.append("Stacker details (every candidate out of fold, per source, per provenance): `stacking/report.md`.\n")
    text = "\n".join(parts)
    atomic_write_text(out / "report.md", text)
    report = {"rows": rows, "stages": stages, **report}
    atomic_write_json(out / "report.json", report)
    print("\n" + text)
    return report
