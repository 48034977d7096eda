"""Measure what the extra pseudo-labelled pairs buy the student (issue 21, item 4): the same student (backbone, rows,
epochs, loss) trained with and without ``student.extra_pairs``, both scored on the held-out test labels with a paired
95% prompt-bootstrap interval (all rows and per source).

    PYTHONPATH=$PWD python scripts/extra_pairs_gain.py --pairs runs/pairs/mtbench_unlabelled.csv \\
        --workdir runs/extra-pairs [--config configs/demo.yaml] [--set key=value ...]

Runs the teachers once (they pseudo-label the pairs: data.extra is set to them), then two final
students (student.oof=false: the comparison needs no fold students) and writes <workdir>/extra_pairs_gain.json.
"""

from __future__ import annotations

import argparse

import numpy as np

from arena_kd.common.config import PipelineConfig, load_config
from arena_kd.common.io import atomic_write_json
from arena_kd.common.metrics import log_loss_difference, log_loss_interval, softmax, verdict
from arena_kd.data.folds import prompt_groups
from arena_kd.heldout import labelled_test_frame, student_test_logits
from arena_kd.student.run import run_distill
from arena_kd.teachers.run import run_teachers


def _variant(base: PipelineConfig, name: str, enabled: bool) -> PipelineConfig:
    d = base.to_dict()
    d["workdir"] = str(base.workdir_path / name)
    d["folds"]["file"] = str(base.folds_path())
    d["student"]["distill"]["soft_labels"] = str(base.soft_labels_path())
    d["student"]["extra_pairs"].update(enabled=enabled,
                                       soft_labels=str(base.workdir_path / "teachers" / "soft_labels_extra.parquet"))
    return PipelineConfig.model_validate(d)


def _interval(y, p, groups, seed) -> dict:
    ci = log_loss_interval(y, p, groups, seed=seed)
    return {"log_loss": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "rows": int(len(y))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--pairs", required=True, help="unlabelled pairs (arena-kd make-pairs)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    a = ap.parse_args()
    base = load_config([a.config], [f"workdir={a.workdir}", *a.sets, f"data.extra=[{a.pairs}]",
                                    "teachers.predict_extra=true", "student.oof=false", "student.final=full",
                                    "student.extra_pairs.enabled=false"])
    run_teachers(base)
    test, y = labelled_test_frame(base)
    groups = prompt_groups(test)
    probs, summary = {}, {}
    for name, enabled in (("without", False), ("with", True)):
        cfg = _variant(base, name, enabled)
        run_distill(cfg)
        probs[name] = softmax(student_test_logits(cfg.workdir_path / "student" / "export", test, cfg)["avg"])
    scopes = {"all": np.ones(len(y), dtype=bool)}
    if test["source"].notna().all():
        scopes.update({str(s): (test["source"] == s).to_numpy() for s in sorted(test["source"].unique())})
    for scope, m in scopes.items():
        d = log_loss_difference(y[m], probs["with"][m], probs["without"][m], groups[m], seed=base.seed)
        summary[scope] = {"with": _interval(y[m], probs["with"][m], groups[m], base.seed),
                          "without": _interval(y[m], probs["without"][m], groups[m], base.seed),
                          "with_minus_without": {k: d[k] for k in ("mean", "lo", "hi")}, "verdict": verdict(d)}
        print(f"{scope}: with {summary[scope]['with']['log_loss']:.4f}, without "
              f"{summary[scope]['without']['log_loss']:.4f}, with − without {d['mean']:+.4f} "
              f"[{d['lo']:+.4f}, {d['hi']:+.4f}] ({verdict(d)}; {int(m.sum())} rows)")
    atomic_write_json(base.workdir_path / "extra_pairs_gain.json", {"config": a.config, "sets": a.sets,
                                                                     "pairs": a.pairs, "scopes": summary})


if __name__ == "__main__":
    main()
