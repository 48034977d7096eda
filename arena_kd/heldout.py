"""`make all`'s evaluation on the held-out test labels (``data.test_labels``): the probabilities of every stage on the
same test rows, and their statistics — each stage with a 95% interval, paired differences for every "did it pay for
itself" line, per-source rows. :mod:`arena_kd.report` writes them out.

Stages: uniform, class prior, the length-only LightGBM, each teacher and the teacher ensemble (fold models averaged
over the test rows, written by the teachers stage when ``data.extra`` holds the test file and
``teachers.predict_extra`` is on), the hard-label and the distilled student (swap TTA), the stacker candidates before
and after temperature, and the submission file itself.

Intervals are percentile bootstraps that resample prompts (data.folds.prompt_groups: the first user turn), not rows:
MT-Bench rows share their question across model pairs and turns, so their errors are not independent. A verdict
("yes" / "NO") is given only when the 95% interval of the paired difference excludes zero (metrics.verdict);
otherwise the line says "not resolved at this size".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.blend.features import is_student_column
from arena_kd.blend.temperature import apply_temperature
from arena_kd.common.config import PipelineConfig
from arena_kd.common.io import read_keyed_table
from arena_kd.common.keys import LABELS, LOGIT_COLUMNS
from arena_kd.common.metrics import log_loss_difference, own_mean, softmax, verdict
from arena_kd.common.tables import finite, interval_row

# Stage names, defined once: heldout adds them, arena_kd.report compares them.
UNIFORM = "uniform (1/3 each)"
PRIOR = "class prior (train frequencies)"
LENGTH_ONLY = "length-only LightGBM"
TEACHER_ENSEMBLE = "teacher ensemble"
HARD = "student, hard labels only (alpha=0), TTA"
DISTILLED_SINGLE = "student, distilled, no TTA"
DISTILLED = "student, distilled, TTA"
STACKER_RAW = "stacker (before temperature)"
STUDENT_STACKER = "stacker candidate using the student, chosen out of fold"
FINAL = "submission.csv (final)"
STACKER_LABELS = {
    "stacker": "stacker + temperature", "stacker_single": "stacker, one orientation + temperature",
    "features_only": "features-only stacker + temperature (fallback)",
    "student": "student TTA + temperature (stacker candidate)",
    "student_single": "student one orientation + temperature (stacker candidate)",
    "log_pool": "log pool of features-only + student TTA (stacker candidate)",
    "log_pool_single": "log pool of features-only + student, one orientation (stacker candidate)",
}
FEATURES_ONLY = STACKER_LABELS["features_only"]
ANSWERS = {"a better": "yes", "b better": "NO"}  # metrics.verdict of a − b -> "does a beat b?"


@dataclass
class Evaluation:
    """Probabilities of every stage on the same test rows, their labels, prompt groups and sources; ``train``: the
    labelled training rows (label, source), for the per-source class priors."""

    labels: np.ndarray
    groups: np.ndarray
    sources: np.ndarray | None
    seed: int = 0
    probs: dict[str, np.ndarray | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    train: pd.DataFrame | None = None

    def add(self, stage: str, probs: np.ndarray | None, note: str = "") -> None:
        self.probs[stage] = None if probs is None else np.asarray(probs, dtype=np.float64)
        self.notes[stage] = note

    def row(self, stage: str, mask: np.ndarray | None = None) -> dict[str, Any]:
        p = self.probs.get(stage)
        if p is None:
            return {"stage": stage, "log_loss": None, "lo": None, "hi": None, "accuracy": None, "rows": 0,
                    "note": self.notes.get(stage, "")}
        m = np.ones(len(self.labels), dtype=bool) if mask is None else mask
        return interval_row(stage, self.labels[m], p[m], self.groups[m], self.seed, self.notes.get(stage, ""))

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(s) for s in self.probs]

    def source_masks(self) -> dict[str, np.ndarray]:
        if self.sources is None:
            return {}
        return {s: self.sources == s for s in sorted(set(self.sources.tolist()))}

    def per_source_rows(self, stages: list[str], extra: dict[str, dict[str, np.ndarray]] | None = None,
                        baseline: str | None = None) -> list[dict[str, Any]]:
        """Rows per source for ``stages`` (those with probabilities) plus per-source-only entries of ``extra``
        ({stage: {source: probs for that source's rows}}). ``baseline`` (an entry of ``extra``): every other row of
        that source also gets ``vs`` = its paired difference to the baseline with the interval and the answer to
        'does it beat the baseline?' (:meth:`paired`)."""
        out = []
        for src, m in self.source_masks().items():
            entries = [(s, self.probs[s][m], self.notes.get(s, "")) for s in stages if self.probs.get(s) is not None]
            entries += [(s, by_src[src], "") for s, by_src in (extra or {}).items() if src in by_src]
            base = (extra or {}).get(baseline, {}).get(src) if baseline else None
            for s, p, note in entries:
                row = {**interval_row(s, self.labels[m], p, self.groups[m], self.seed, note), "source": src}
                if base is not None and s != baseline:
                    row["vs"] = self.paired(p, base, m)
                out.append(row)
        return out

    def row_signal(self, constants: list[str]) -> list[dict[str, Any]]:
        """Per source, every stage but ``constants`` (uniform, the class prior: no learned stage) paired against its
        own mean prediction on that source's rows, A/B pooled (``vs``): a constant with the stage's class mix, so a
        stage that beats it ranks the rows — its row-to-row variation says which answer is better — beyond the mix it
        predicts. The mean is of the stage's own predictions on those rows; no label enters it."""
        out = []
        for src, m in self.source_masks().items():
            for stage, p in self.probs.items():
                if p is None or stage in constants:
                    continue
                row = interval_row(stage, self.labels[m], p[m], self.groups[m], self.seed, self.notes.get(stage, ""))
                out.append({**row, "source": src, "vs": self.paired(p[m], own_mean(p[m]), m)})
        return out

    def paired(self, pa: np.ndarray, pb: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        """log_loss(a) − log_loss(b) on the rows of ``mask`` (``pa``/``pb``: those rows' probabilities), its
        interval and the answer to 'does a beat b?' (yes / NO only when the interval excludes zero)."""
        d = log_loss_difference(self.labels[mask], pa, pb, self.groups[mask], seed=self.seed)
        return {"diff": d["mean"], "lo": finite(d["lo"]), "hi": finite(d["hi"]), "prompts": int(d["groups"]),
                "answer": ANSWERS.get(verdict(d), "not resolved at this size")}

    def compare(self, a: str, b: str, what: str, mask: np.ndarray | None = None, scope: str = ""
                ) -> dict[str, Any] | None:
        """'Does a beat b?' with the paired difference log_loss(a) − log_loss(b) and its interval."""
        pa, pb = self.probs.get(a), self.probs.get(b)
        if pa is None or pb is None:
            return None
        m = np.ones(len(self.labels), dtype=bool) if mask is None else mask
        return {"what": what, "scope": scope or "all test rows", "a": a, "b": b, **self.paired(pa[m], pb[m], m),
                "rows": int(m.sum())}


# --------------------------------------------------------------------------- reading what each stage wrote


def labelled_test_frame(cfg: PipelineConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """Test pairs, their labels, and (as ``test['source']``) each row's source from the labels file when it has one."""
    from arena_kd.common.errors import UserError
    from arena_kd.data.readers import read_labels, read_pairs

    test = read_pairs(cfg.data.test)
    labels = read_labels(cfg.data.test_labels)
    merged = test[["id"]].merge(labels, on="id", how="left")
    if merged["label"].isna().any():
        missing = merged.loc[merged["label"].isna(), "id"].head(3).tolist()
        raise UserError(f"{cfg.data.test_labels}: {int(merged['label'].isna().sum())} test ids have no label "
                        f"(e.g. {missing})")
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


def _logit_probs(path: Path, ids: pd.Series) -> np.ndarray | None:
    """Softmax of the logit columns of a keyed table for ``ids`` (in their order); None when an id is missing."""
    df, _ = read_keyed_table(path)
    df = df.set_index("id").reindex(ids.astype(str))
    if df[list(LOGIT_COLUMNS)].isna().any().any():
        return None
    return softmax(df[list(LOGIT_COLUMNS)].to_numpy())


def _teacher_test_probs(cfg: PipelineConfig, ids: pd.Series) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Each teacher's test probabilities (fold models averaged, from the teachers' extra predictions) and the
    ensemble. A teacher's extra predictions count only when made by the config, rows and folds of the soft labels
    beside them (a file left by an earlier teacher of the same name is not this run's)."""
    from arena_kd.common.io import read_sidecar
    from arena_kd.teachers.run import extra_is_current

    tdir = cfg.workdir_path / "teachers"
    hashes = read_sidecar(tdir / "soft_labels.parquet").get("hashes", {})
    per: dict[str, np.ndarray] = {}
    for t in cfg.teachers.models:
        path = tdir / t.name / "extra.parquet"
        probs = _logit_probs(path, ids) if extra_is_current(path, hashes, t.name) else None
        if probs is not None:
            per[t.name] = probs
    path = tdir / "soft_labels_extra.parquet"
    return per, _logit_probs(path, ids) if path.is_file() else None


def student_test_logits(export_dir: Path, test: pd.DataFrame, cfg: PipelineConfig) -> dict[str, np.ndarray] | None:
    """Student logits on the test rows, both orientations (as the submission computes them; a fold ensemble's
    members reduced like the submission reduces them: common.metrics.mean_log_softmax per orientation)."""
    if not export_dir.is_dir():
        return None
    from arena_kd.common.metrics import mean_log_softmax
    from arena_kd.llm.export import load_export
    from arena_kd.llm.export_members import export_members
    from arena_kd.llm.predict import predict_tta, tta_average

    p = cfg.student.predict
    outs = []
    for member in export_members(export_dir):
        model, tokenizer, settings = load_export(member, quantization="none", dtype="auto")
        r = settings["render"]
        outs.append(predict_tta(model, tokenizer, test, max_length=r["max_length"], truncation=r["truncation"],
                                prompt_fraction=r["prompt_fraction"], template=r.get("template", "blocks"),
                                tokens_per_batch=p.tokens_per_batch, max_batch_size=p.max_batch_size))
        del model
    if len(outs) == 1:
        return outs[0]
    orig = mean_log_softmax([o["orig"] for o in outs])
    swap = mean_log_softmax([o["swap"] for o in outs])
    return {"orig": orig, "swap": swap, "avg": tta_average(orig, swap), "members": len(outs)}


def _members_note(out: dict | None) -> str:
    """The evaluation note of a fold ensemble's row ('' for one model)."""
    return f"mean of {out['members']} fold students (student.final=fold_ensemble)" if out and "members" in out else ""


def _load_stacker(cfg: PipelineConfig):
    stack_dir = cfg.workdir_path / "stacking"
    if not cfg.stacking.enabled or not (stack_dir / "stacker.json").is_file():
        return None
    from arena_kd.blend.stacker import load_stacker

    return load_stacker(stack_dir)


# --------------------------------------------------------------------------- evaluation


def evaluate_stages_on_test(cfg: PipelineConfig, hard_cfg: PipelineConfig | None,
                            nested_cfg: PipelineConfig | None = None) -> Evaluation:
    """Probabilities of every stage on the held-out test rows (module doc)."""
    from arena_kd.data.folds import prompt_groups
    from arena_kd.stacking.candidates import length_only_probs, pooled_prior

    test, y = labelled_test_frame(cfg)
    train = _train_labels(cfg)
    sources = test["source"].to_numpy(dtype=object) if test["source"].notna().all() else None
    ev = Evaluation(labels=y, groups=prompt_groups(test), sources=sources, seed=cfg.seed,
                    train=train[["label", "source"]] if sources is not None else None)
    n = len(y)
    ev.add(UNIFORM, np.full((n, 3), 1 / 3))
    prior = pooled_prior(train["label"].to_numpy(dtype=np.int64))
    ev.add(PRIOR, np.tile(prior, (n, 1)), f"A/B pooled, {len(train)} training rows")
    stacker = _load_stacker(cfg)
    feats = None if stacker is None else stacker.features(test, None)  # every candidate's text features, once
    if stacker is not None and stacker.models.get("length_only") is not None:
        ev.add(LENGTH_ONLY, stacker.predict_model(test, "length_only", feats=feats),
               f"the stacker's length-only candidate ({stacker.manifest['rows']} rows)")
    else:
        ev.add(LENGTH_ONLY, length_only_probs(train, test, cfg.stacking, cfg.seed),
               f"{len(train)} training rows")
    per, ens = _teacher_test_probs(cfg, test["id"])
    for t in cfg.teachers.models:
        ev.add(f"teacher {t.name}", per.get(t.name), "" if t.name in per else "no test predictions")
    if cfg.teachers.models:
        ev.add(TEACHER_ENSEMBLE, ens, "" if ens is not None else "no test predictions")
    if hard_cfg is not None:
        hard = student_test_logits(hard_cfg.workdir_path / "student" / "export", test, cfg)
        ev.add(HARD, None if hard is None else softmax(hard["avg"]), _members_note(hard))
    student = student_test_logits(cfg.workdir_path / "student" / "export", test, cfg)
    stud = None if student is None else {"orig": student["orig"], "swap": student["swap"]}
    if student is not None:
        ev.add(DISTILLED_SINGLE, softmax(student["orig"]), _members_note(student))
        ev.add(DISTILLED, softmax(student["avg"]), _members_note(student))
    if stacker is not None:
        _stacker_rows(ev, stacker, test, stud, feats)
    if nested_cfg is not None and student is not None and stacker is not None:
        other = _load_stacker(nested_cfg)
        if other is not None:
            mine, theirs = ("nested", "plain") if cfg.student.distill.nested else ("plain", "nested")
            ev.add(f"stacker as selected, fold students on {mine} soft labels",
                   stacker.predict(test, stud, feats=feats), "this run")
            ev.add(f"stacker as selected, fold students on {theirs} soft labels", other.predict(test, stud),
                   "ablation")
    sub_path = Path(cfg.submission.out) if cfg.submission.out else cfg.workdir_path / "submission.csv"
    if sub_path.is_file():
        sub = pd.read_csv(sub_path, dtype={"id": str}).set_index("id").reindex(test["id"].astype(str))
        ev.add(FINAL, sub[list(LABELS)].to_numpy())
    return ev


def _stacker_rows(ev: Evaluation, stacker, test: pd.DataFrame, stud: dict | None, feats: pd.DataFrame) -> None:
    """Each stacker candidate of STACKER_LABELS that can answer (the ones needing the student only with one)."""
    sel = stacker.selection
    for name, label in STACKER_LABELS.items():
        model = stacker.models.get(name)
        needs_student = model is not None and (model.kind != "lightgbm"
                                               or any(is_student_column(c) for c in model.features))
        if model is None or needs_student and stud is None:
            continue
        chosen = [m for m, w in sel.items() if w == name and m != "short"]
        note = f"selected for student mode {', '.join(chosen)}" if chosen else ""
        raw = stacker.predict_model(test, name, stud, calibrate=False, feats=feats)  # the booster once
        if name == "stacker" and stud is not None:
            ev.add(STACKER_RAW, raw)
        ev.add(label, apply_temperature(raw, model.temperature), note)
    best = _student_stacker(stacker, ev)
    if best is not None:
        ev.add(STUDENT_STACKER, ev.probs[STACKER_LABELS[best[0]]], best[1])


def _student_stacker(stacker, ev: Evaluation) -> tuple[str, str] | None:
    """(name, note) of the TTA candidate that uses the student (the LightGBM stacker or the log pool) with the lowest
    out-of-fold log loss in stacker.json: the one goal (c) asks about. Chosen on the training rows' OOF, never on the
    test rows; None when neither answered."""
    from arena_kd.stacking.candidates import STUDENT_STACKERS, best_student_stacker

    table = {r.get("name"): r.get("log_loss") for r in (stacker.manifest.get("candidates") or {}).get("tta") or []}
    oof = {n: table.get(n) for n in STUDENT_STACKERS if ev.probs.get(STACKER_LABELS[n]) is not None
           and isinstance(table.get(n), (int, float))}
    name = best_student_stacker(oof)
    if name is None:
        return None
    return name, f"{STACKER_LABELS[name]} (OOF " + ", ".join(f"{n} {v:.4f}" for n, v in oof.items()) + ")"
