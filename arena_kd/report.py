"""`make all`'s report: ``<workdir>/report.md`` + ``report.json`` + ``report_logloss.png`` from the held-out test
evaluation (:mod:`arena_kd.heldout`), the nested soft-label ablation, every trained model's training curves
(``training_curves.png`` in each stage folder) and the wall time / peak memory of every stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from arena_kd.common.config import PipelineConfig
from arena_kd.common.io import atomic_write_json, atomic_write_text
from arena_kd.common.profiling import StageRecord
from arena_kd.common.tables import bar_chart, format_table, training_curves_chart
from arena_kd.heldout import (
    DISTILLED,
    DISTILLED_SINGLE,
    FEATURES_ONLY,
    FINAL,
    HARD,
    LENGTH_ONLY,
    PRIOR,
    STACKER_LABELS,
    STACKER_RAW,
    STUDENT_STACKER,
    TEACHER_ENSEMBLE,
    UNIFORM,
    Evaluation,
)
from arena_kd.oof_report import (
    nested_oof_comparison,
    nested_section,
    read_stacker_oof,
    stacker_oof_comparison,
    stacker_section,
    twin_oof_comparison,
    twin_pair,
    twin_section,
)
from arena_kd.power_report import RowDiffs, oof_differences, power_section, projections

UNIFORM_LOG_LOSS = float(np.log(3.0))
STACKER = STACKER_LABELS["stacker"]
LOG_POOL = STACKER_LABELS["log_pool"]
CHECKS = (  # (a, b, what): "does a beat b?"
    (DISTILLED, HARD, "distilled student beats the hard-label student"),
    (DISTILLED, DISTILLED_SINGLE, "TTA beats one orientation"),
    (STACKER, DISTILLED, "stacker + temperature beats the student"),
    (STACKER, STACKER_RAW, "temperature improves the stacker"),
    (STACKER, FEATURES_ONLY, "the student's logits improve the LightGBM stacker"),
    (LOG_POOL, FEATURES_ONLY, "the log pool with the student beats the features-only stacker"),
    (FINAL, LENGTH_ONLY, "final submission beats the length-only LightGBM"),
    (FINAL, PRIOR, "final submission beats the class prior"),
    (FINAL, UNIFORM, "final submission beats uniform"),
    ("stacker as selected, fold students on nested soft labels",
     "stacker as selected, fold students on plain soft labels",
     "nested teacher soft labels beat plain ones (through the stacker)"),
)
PER_SOURCE_CHECKS = ((UNIFORM, "final submission beats uniform"),
                     (LENGTH_ONLY, "final submission beats the length-only LightGBM"))


def verdicts(ev: Evaluation) -> list[dict[str, Any]]:
    """Every 'did it pay for itself' line, with the paired-difference interval (Evaluation.compare)."""
    out = [v for a, b, what in CHECKS if (v := ev.compare(a, b, what)) is not None]
    for src, m in ev.source_masks().items():
        for b, what in PER_SOURCE_CHECKS:
            v = ev.compare(FINAL, b, what, mask=m, scope=f"source {src}")
            if v is not None:
                out.append(v)
    return out


GOALS = (  # issue 21's (a)-(c): (goal, a, b, what, also per source?); per source: (b) only, as the issue sets them
    ("a", TEACHER_ENSEMBLE, PRIOR, "the teachers beat the class prior", False),
    ("b", DISTILLED, HARD, "the distilled student beats its hard-label twin", True),
    ("b", DISTILLED, PRIOR, "the distilled student beats the class prior", True),
    ("c", STUDENT_STACKER, FEATURES_ONLY, "the student's logits improve the stacker", False),
)


def distillation_goals(ev: Evaluation) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Does the run show distillation? (a) the teachers (their ensemble, weights fitted out of fold, never on the
    test rows; a single teacher when there is one) beat the class prior; (b) the distilled student beats its
    hard-label twin and the class prior, on the mix and on each source; (c) the student's logits improve the
    stacker.
    The per-source table holds every stage against each source's own constant. Returns the paired lines and, per
    goal, "yes" only when every one of its lines is yes."""
    teachers = [s for s in ev.probs if s.startswith("teacher ") and s != TEACHER_ENSEMBLE]
    lines = []
    for goal, a, b, what, per_src in GOALS:
        if a == TEACHER_ENSEMBLE and a not in ev.probs and len(teachers) == 1:
            a = teachers[0]
        scopes = [(None, "")] + ([(m, f"source {s}") for s, m in ev.source_masks().items()] if per_src else [])
        for mask, scope in scopes:
            v = ev.compare(a, b, what, mask=mask, scope=scope)
            if v is not None:
                lines.append({**v, "goal": goal})
    answers = {g: ("yes" if all(v["answer"] == "yes" for v in lines if v["goal"] == g) else "no")
               for g in dict.fromkeys(v["goal"] for v in lines)}
    return lines, answers


def _goals_section(lines: list[dict[str, Any]], answers: dict[str, str]) -> str:
    summary = ", ".join(f"({g}) {'**resolved**' if a == 'yes' else 'not resolved'}" for g, a in answers.items())
    text = ("### Does distillation show?\n\n(a) the teachers beat the class prior, (b) the distilled student beats "
            "its hard-label twin and the class prior, on the mix and on each source, (c) the student's logits improve "
            "the stacker. A goal is resolved when every one of its paired 95% intervals excludes "
            "zero on the better side. The intervals resample whole prompts (the first user turn), so a source "
            "with few prompts among the test rows gets a wide one, however many rows it has; the out-of-fold (b) "
            "table below (when the hard twin ran) scores every training row, and the next section (\"Could the "
            "test split resolve it?\") gives each line's chance of resolving on a split of this shape, from the effect "
            f"measured out of fold. This run: {summary}.\n\n")
    text += "\n".join(f"- ({v['goal']}) " + format_verdicts([v])[2:] for v in lines) + "\n"
    if any(a != "yes" for a in answers.values()):
        text += ("\nWhat each goal still lacks and what a larger run buys, measured on this machine: README \"Could "
                 "the test split resolve it?\", \"What the test split can resolve\", \"A teacher that ranks rows\", "
                 "\"Prior-matched soft labels\" and \"Learning curve, bf16 and threads\" (`make all-full`, "
                 "configs/demo-full.yaml) and "
                 "benchmarks/RESULTS.md \"Learning curve\".\n")
    return text


def format_verdicts(lines: list[dict[str, Any]]) -> str:
    out = []
    for v in lines:
        ci = "—" if v["lo"] is None else f"[{v['lo']:+.4f}, {v['hi']:+.4f}]"
        out.append(f"- {v['what']} ({v['scope']}, {v['rows']} rows, {v['prompts']} prompts): **{v['answer']}** — "
                   f"log loss difference {v['diff']:+.4f}, 95% interval {ci} ({v['a']} minus {v['b']})")
    return "\n".join(out)


OWN_CONSTANT = "class prior of this source (oracle)"


def source_constants(ev: Evaluation) -> dict[str, np.ndarray]:
    """source -> its own constant answer on its test rows: the pooled label frequencies (A/B pooled, +1 smoothing, as
    the class prior) of that source's training rows. An oracle (test rows carry no source), and the bar a model must
    clear to show it learned which answer is better rather than which source a row comes from (HH has no ties:
    ~0.693)."""
    from arena_kd.stacking.candidates import pooled_prior

    if ev.train is None or ev.sources is None:
        return {}
    own = {}
    for src, m in ev.source_masks().items():
        y = ev.train.loc[ev.train["source"] == src, "label"].to_numpy(dtype=np.int64)
        if len(y):
            own[src] = np.tile(pooled_prior(y), (int(m.sum()), 1))
    return own


def per_source(ev: Evaluation) -> list[dict[str, Any]]:
    """Per test source: every stage (uniform, class prior, teachers, students, stacker candidates, final) and the
    source's own constant (:func:`source_constants`); each row paired against that constant (``vs``: does the stage
    beat it?)."""
    own = source_constants(ev)
    return ev.per_source_rows(list(ev.probs), {OWN_CONSTANT: own} if own else None, baseline=OWN_CONSTANT)


def plot_log_loss(rows: list[dict[str, Any]], path: Path) -> None:
    """Log loss per stage (bars), the uniform answer dashed."""
    rs = [r for r in rows if r["log_loss"] is not None]
    losses = [r["log_loss"] for r in rs]
    bar_chart([r["stage"] for r in rs], losses, path, xlabel="log loss on held-out test labels (lower is better)",
              width=8, bar_height=0.35, dpi=110, color="#4C72B0", vline=UNIFORM_LOG_LOSS,
              xlim=(max(0.0, min(losses) - 0.1), max(losses) + 0.02))


def _held_out_section(ev: Evaluation, out: Path, report: dict[str, Any],
                      oof_diffs: dict[tuple[str, str], RowDiffs] | None = None) -> list[str]:
    rows = ev.rows()
    selection = None
    sj = out / "stacking" / "stacker.json"
    if sj.is_file():
        selection = json.loads(sj.read_text()).get("selection")
    parts = ["## Held-out test set (never used for fitting)\n",
             f"{len(ev.labels)} rows, {len(np.unique(ev.groups))} distinct prompts; 95% intervals: bootstrap over "
             "prompts.\n", format_table(rows) + "\n"]
    if selection:
        parts.append("What the submission uses, chosen by out-of-fold log loss on the training rows "
                     "(`stacking/report.md`): "
                     + ", ".join(f"student mode `{m}` → `{w}`" for m, w in selection.items()) + ".\n")
    goals, answers = distillation_goals(ev)
    if goals:
        parts.append(_goals_section(goals, answers))
        report.update({"goals": goals, "goal_answers": answers})
        projected = projections(goals, ev, oof_diffs or {})
        if projected:
            parts.append(power_section(projected))
            report["resolving_power"] = projected
    lines = verdicts(ev)
    if lines:
        parts.append("### Did each stage pay for itself?\n\nA yes/NO only when the 95% interval of the paired "
                     "difference excludes zero.\n\n" + format_verdicts(lines) + "\n")
    by_source = per_source(ev)
    if by_source:
        parts.append("### Per source\n\nUniform scores log 3 = 1.0986 everywhere. A source's own constant (its "
                     "training label frequencies, A/B pooled) already knows which source a row comes from: only a "
                     "stage that beats it (paired 95% interval below zero) has learned which answer is better.\n\n"
                     + format_table(by_source, versus="own constant") + "\n")
    signal = ev.row_signal([UNIFORM, PRIOR])
    if signal:
        parts.append("### Does a stage rank the rows, or only predict a source's class mix?\n\nEach learned stage "
                     "against its own mean prediction on the source's rows (A/B pooled; no label used): a constant "
                     "with the stage's class mix. Only a stage that beats it (paired 95% interval below zero) says, "
                     "row by row, which answer is better; one that loses to it varies from row to row on noise.\n\n"
                     + format_table(signal, versus="its own mean") + "\n")
    plot_log_loss(rows, out / "report_logloss.png")
    parts.append("![log loss per stage](report_logloss.png)\n")
    report.update({"rows": rows, "verdicts": lines, "per_source": by_source, "row_signal": signal,
                   "selection": selection})
    return parts


def training_runs(workdir: Path) -> dict[Path, dict[str, Path]]:
    """Stage folder -> {run name: its metrics.jsonl} for every model trained under ``workdir``: a run is the
    ``fold<k>`` or ``final/run`` folder llm.train wrote its per-step log into (teachers/<name>, student, and the
    ablations' student folders)."""
    out: dict[Path, dict[str, Path]] = {}
    for path in sorted(workdir.rglob("metrics.jsonl")):
        parts = path.relative_to(workdir).parts[:-1]
        at = [i for i, p in enumerate(parts) if p == "final" or (p.startswith("fold") and p[4:].isdigit())]
        if at:
            out.setdefault(workdir.joinpath(*parts[:at[-1]]), {})["/".join(parts[at[-1]:])] = path
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    lines = (ln for ln in path.read_text().splitlines() if ln.strip())
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:  # a line cut by a killed run: the curve skips it
            continue
    return out


def write_training_curves(workdir: Path) -> list[tuple[str, str]]:
    """``training_curves.png`` in every stage folder with logged training steps; [(stage, path relative to workdir)]."""
    written = []
    for stage_dir, runs in training_runs(workdir).items():
        name = str(stage_dir.relative_to(workdir))
        png = stage_dir / "training_curves.png"
        if training_curves_chart({run: _read_jsonl(p) for run, p in runs.items()}, png, title=name):
            written.append((name, str(png.relative_to(workdir))))
    return written


def _curves_section(curves: list[tuple[str, str]]) -> str:
    links = "\n".join(f"![training curves of {name}]({png})" for name, png in curves)
    return ("## Training curves\n\nThe loss terms each model logged per step (every `train.logging_steps`), one line "
            "per fold model and the final model: hard-label CE, the KL to the teachers (the KD term, scaled neither by "
            "alpha nor T²) and the cosine term when used.\n\n" + links + "\n")


def write_report(cfg: PipelineConfig, ev: Evaluation | None, records: list[StageRecord],
                 nested_cfg: PipelineConfig | None = None, hard_cfg: PipelineConfig | None = None) -> dict[str, Any]:
    """Write report.md and report.json under the workdir (and print the Markdown); return the report dict."""
    out = cfg.workdir_path
    stages = [r.as_dict() for r in records]
    parts = [f"# arena-kd report — `{out}`\n"]
    report: dict[str, Any] = {"rows": []}
    twin = twin_pair(cfg, hard_cfg) if hard_cfg is not None and hard_cfg.student.oof else None
    stack_oof = read_stacker_oof(out)
    if ev is not None:
        parts += _held_out_section(ev, out, report, oof_differences(twin, stack_oof))
    if nested_cfg is not None:
        cmp = nested_oof_comparison(cfg, nested_cfg)
        if cmp is not None:
            parts.append(nested_section(cmp))
            report["nested_oof"] = cmp
    twin_oof = twin_oof_comparison(twin, cfg.seed)
    if twin_oof is not None:
        parts.append(twin_section(twin_oof))
        report["twin_oof"] = twin_oof
    stacker_oof = stacker_oof_comparison(stack_oof, cfg.seed)
    if stacker_oof is not None:
        parts.append(stacker_section(stacker_oof))
        report["stacker_oof"] = stacker_oof
    curves = write_training_curves(out)
    if curves:
        parts.append(_curves_section(curves))
        report["training_curves"] = dict(curves)
    parts.append("## Wall time and peak memory per stage\n")
    lines = ["| stage | wall time (s) | peak RSS (MiB) |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_rss_mib']:.0f} |" for s in stages]
    parts.append("\n".join(lines) + "\n")
    if (out / "stacking" / "report.md").is_file():
        parts.append("Stacker details (every candidate out of fold, per source, per provenance): "
                     "`stacking/report.md`.\n")
    text = "\n".join(parts)
    atomic_write_text(out / "report.md", text)
    report = {**report, "stages": stages}
    atomic_write_json(out / "report.json", report)
    print("\n" + text)
    return report
