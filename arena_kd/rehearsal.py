"""`make rehearsal`: the real recipe end to end on CPU, down to the Kaggle notebook's own cell.

1. teachers → distill → stack with ``configs/kaggle-gemma2.yaml`` laid under ``configs/rehearsal.yaml`` (sizes only;
   see that file and README "Dress rehearsal"); the export is then also checked loaded in 4-bit, so the export
   drifts for none / 8-bit / 4-bit are all on record.
2. ``arena-kd package`` of that run into ``<out>/kaggle/upload/`` (code, artifacts and wheels datasets with their
   metadata, the submission notebook with its kernel metadata; no download: this environment has every package, so
   the wheels dataset holds this project's wheel), mounted as on Kaggle under ``<out>/kaggle/input/`` (one link per
   dataset) beside the competition folder ``lmsys-chatbot-arena`` (train.csv, test.csv, sample_submission.csv).
3. Every metadata file checked again (kaggle_package.check_upload); the notebook's own code cell, read from the
   .ipynb the kernel metadata names, run as a Python process from ``<out>/kaggle/working`` with the uploaded and
   competition folders read-only, ``PIP_NO_INDEX=1``, the Hugging Face hub offline, and ``/kaggle/input`` pointed
   at ``<out>/kaggle/input``.
4. Prints the notebook cell, the `kaggle` commands, the rows per path, the soup and export drifts, validates
   submission.csv and writes ``<out>/rehearsal.json``. Exit 1 when the file is invalid, a metadata rule fails or
   the notebook failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from arena_kd.common.io import atomic_write_json, atomic_write_text
from arena_kd.common.keys import LABELS
from arena_kd.kaggle_metadata import COMPETITION, KERNEL_META, code_cells, read_json
from arena_kd.kaggle_package import INPUT_ENV, Names, check_upload, package

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "kaggle-gemma2.yaml"
OVERRIDES = REPO / "configs" / "rehearsal.yaml"
OWNER = "rehearsal"  # any valid Kaggle username: nothing is uploaded


def _writable(path: Path) -> None:
    """Undo a previous run's read-only folders so they can be replaced."""
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
    if path.exists():
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _read_only(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            p = Path(root) / name
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _manifest(path: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every entry under ``path``: equal before and after = nothing written there."""
    return sorted((str(p.relative_to(path)), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
                  for p in path.rglob("*"))


def build_inputs(cfg, kaggle: Path, test_rows: int | None) -> tuple[dict[str, Any], Names, dict[str, Path]]:
    """``arena-kd package`` of the run into ``kaggle/upload`` (no download: this environment holds every package,
    so the wheels dataset has the project's own wheel), mounted as Kaggle does: ``kaggle/input/<slug>`` is each
    dataset folder (a link to it: the rehearsal runs on exactly what would be uploaded), beside the competition folder
    (train.csv, test.csv, sample_submission.csv). Returns (package.json, the names, the real folders to protect)."""
    if kaggle.exists():
        _writable(kaggle)
        shutil.rmtree(kaggle)
    upload, inp = kaggle / "upload", kaggle / "input"
    names = Names(OWNER)
    summary = package(cfg.workdir_path, OWNER, upload, download=None)
    comp = inp / COMPETITION
    comp.mkdir(parents=True)
    for slug in names.datasets.values():
        (inp / slug).symlink_to(upload / slug, target_is_directory=True)
    test = pd.read_csv(cfg.data.test, dtype={"id": str})
    sample = pd.read_csv(cfg.data.sample_submission, dtype={"id": str})
    if test_rows is not None:
        test = test.head(test_rows)
        sample = sample[sample["id"].isin(set(test["id"]))]
    # the competition folder has it too (predict.py's class prior)
    shutil.copy2(cfg.data.train, comp / "train.csv")
    test.to_csv(comp / "test.csv", index=False)
    sample.to_csv(comp / "sample_submission.csv", index=False)
    return summary, names, {"upload": upload, "competition": comp, "input": inp}


def notebook_source(upload: Path, names: Names) -> tuple[Path, str]:
    """The notebook the kernel metadata names, and its code cells as Jupyter would run them."""
    kdir = upload / names.kernel
    path = kdir / read_json(kdir / KERNEL_META)["code_file"]
    return path, "\n".join(code_cells(read_json(path)))


def validate(out: Path, sample: Path) -> dict[str, Any]:
    """Every sample id once, in its order, three finite probabilities summing to 1 — else ValueError."""
    import numpy as np

    sub = pd.read_csv(out, dtype={"id": str})
    ids = pd.read_csv(sample, dtype={"id": str})["id"].tolist()
    cols = list(LABELS)
    if list(sub.columns) != ["id", *cols]:
        raise ValueError(f"{out}: columns {list(sub.columns)}")
    if sub["id"].tolist() != ids:
        raise ValueError(f"{out}: ids differ from {sample}")
    p = sub[cols].to_numpy(dtype=float)
    if not (np.isfinite(p).all() and (p > 0).all() and np.allclose(p.sum(1), 1, atol=1e-6)):
        raise ValueError(f"{out}: probabilities not finite/positive/normalised")
    return {"rows": len(sub), "valid": True}


def run(overrides: list[str], sets: list[str], out: Path, test_rows: int | None) -> int:
    from arena_kd.common.config import load_config
    from arena_kd.stacking.run import run_stacking
    from arena_kd.student.run import run_distill
    from arena_kd.teachers.run import run_teachers

    t0 = time.time()
    cfg = load_config([str(BASE), *overrides], sets)
    if cfg.student.final == "fold_ensemble":  # refused before any stage runs
        from arena_kd.common.errors import UserError

        raise UserError("the rehearsal measures one exported model against its final adapter: run it with "
                        "student.final=full or fold_soup (a fold ensemble's members are each verified at distill "
                        "and on every device at submission)")
    times: dict[str, float] = {}
    for name, stage in (("teachers", run_teachers), ("distill", run_distill), ("stack", run_stacking)):
        t = time.time()
        print(f"\n=== rehearsal: {name} ===", flush=True)
        stage(cfg)
        times[name] = round(time.time() - t, 1)
    export_dir = cfg.workdir_path / "student" / "export"
    settings = json.loads((export_dir / "export.json").read_text())
    unchecked = [] if "4bit" in settings.get("verify", {}) else ["4bit"]  # distill checks none + the submission's
    report_merge, checks = export_vs_final_adapter(cfg, export_dir, ["none", "8bit", "4bit"], verify=unchecked)
    if checks:
        settings["verify"] = {**settings.get("verify", {}), **checks}
        atomic_write_json(export_dir / "export.json", settings)

    print("\n=== rehearsal: arena-kd package ===", flush=True)
    t = time.time()
    kaggle = out / "kaggle"
    summary, names, d = build_inputs(cfg, kaggle, test_rows)
    problems = check_upload(d["upload"], names)  # package refuses these; checked again on what it left
    notebook, cell = notebook_source(d["upload"], names)
    working = kaggle / "working"
    working.mkdir()
    for p in (d["upload"], d["competition"], d["input"]):
        _read_only(p)
    times["package"] = round(time.time() - t, 1)
    print(f"notebook {notebook}, its cell run with {INPUT_ENV}={d['input']}:\n{cell}", flush=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                INPUT_ENV: str(d["input"])})
    t = time.time()
    before = [_manifest(d["upload"]), _manifest(d["competition"])]
    rc = subprocess.call([sys.executable, "-c", cell], cwd=working, env=env)  # a notebook kernel is a Python process
    times["notebook"] = round(time.time() - t, 1)
    # the mode bits do not stop root: check nothing was written
    input_unchanged = [_manifest(d["upload"]), _manifest(d["competition"])] == before
    report: dict[str, Any] = {"notebook": str(notebook), "notebook_rc": rc, "seconds": times,
                              "metadata_problems": problems, "kaggle_commands": summary["commands"],
                              "soup": settings.get("soup"), "export_verify": settings.get("verify"),
                              "export_vs_final_adapter": report_merge, "input_unchanged": input_unchanged}
    sub = working / "submission.csv"
    try:
        report["submission"] = validate(sub, d["competition"] / "sample_submission.csv")
        paths = pd.read_csv(working / "submission.paths.csv")
        per_path = paths.groupby(["head", "student"]).size().items()
        report["rows_per_path"] = {f"{h}+{s}": int(n) for (h, s), n in per_path}
    except (OSError, ValueError) as exc:
        report["submission"] = {"valid": False, "error": str(exc)}
    report["wall_time_s"] = round(time.time() - t0, 1)
    _print_report(report)
    atomic_write_text(out / "rehearsal.json", json.dumps(report, indent=2, default=str) + "\n")
    return 0 if rc == 0 and report["submission"].get("valid") and input_unchanged and not problems else 1


def export_vs_final_adapter(cfg, export_dir: Path, precisions: list[str], verify: list[str] = ()
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """|Δprob| of the loaded export vs the final adapter on its trained base (the soup before merging): what the merge,
    the fp16 cast and the load precision alone cost, apart from the soup's own distance to the fold mean.

    Each precision is loaded once; on that same copy the precisions in ``verify`` are also checked against the
    export's reference probabilities (llm.export.verify_export, as the distill stage checks its own).
    Returns (drift per ``<precision>/<dtype>``, verify result per precision in ``verify``)."""
    from arena_kd.common.io import read_keyed_table
    from arena_kd.common.metrics import softmax
    from arena_kd.llm.export import (
        describe_drift,
        load_export,
        prob_drift,
        reference_logits,
        stored_answer_spans,
        verify_export,
    )
    from arena_kd.llm.placement import free_accelerator_memory
    from arena_kd.student.soup import adapter_logits

    ref, _ = read_keyed_table(export_dir / "reference_logits.parquet")
    ids = [list(map(int, r)) for r in ref["input_ids"]]
    spans = stored_answer_spans(ref)
    final = json.loads((cfg.workdir_path / "student" / "final" / "final.json").read_text())["adapter_dir"]
    want = softmax(adapter_logits(cfg.student.model, final, ids, cfg.workdir, spans).astype(float))
    out, checks = {}, {}
    for q in precisions:
        dtype = cfg.student.export_dtype if q == "none" else cfg.submission.dtype
        model, _, _ = load_export(export_dir, quantization=q, dtype=dtype, device="cpu")
        if q in verify:
            checks[q] = verify_export(export_dir, quantization=q, dtype=dtype, model=model)
            print(f"[rehearsal] export check {describe_drift(checks[q])}")
        out[f"{q}/{dtype}"] = prob_drift(reference_logits(model, ids, spans), want)
        del model
        free_accelerator_memory()
    return out, checks


def _print_report(r: dict[str, Any]) -> None:
    from arena_kd.llm.export import describe_drift
    from arena_kd.student.soup import describe_soup

    print("\n=== rehearsal: summary ===")
    print(f"notebook: {r['notebook']}; metadata problems: {r['metadata_problems'] or 'none'}")
    print("kaggle commands: " + " && ".join(r["kaggle_commands"]))
    print(f"notebook exit code: {r['notebook_rc']}; submission.csv: {r['submission']}; input folders unchanged: "
          f"{r['input_unchanged']}")
    print(f"rows per path (head+student mode): {r.get('rows_per_path')}")
    if r.get("soup"):
        print(f"soup drift: {describe_soup(r['soup'])}")
    for d in (r.get("export_verify") or {}).values():
        print(f"export drift: {describe_drift(d) if 'max_abs_prob_diff' in d else d}")
    for k, d in (r.get("export_vs_final_adapter") or {}).items():
        print(f"export {k} vs the final adapter on its trained base: max |Δp| {d['max_abs_prob_diff']:.4f}, "
              f"mean {d['mean_abs_prob_diff']:.4f}, {d['nonfinite_rows']}/{d['rows']} rows non-finite")
    print(f"seconds per step: {r['seconds']}; wall time {r['wall_time_s']:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Dress rehearsal of configs/kaggle-gemma2.yaml on CPU, down to the Kaggle notebook's cell.")
    p.add_argument("--config", action="append", default=None,
                   help=f"Override YAML laid over {BASE.name} (default {OVERRIDES.name}; repeatable).")
    p.add_argument("--set", action="append", default=[],
                   help="Extra dotted.key=value override (the CI test shrinks sizes further).")
    p.add_argument("--out", default="runs/rehearsal",
                   help="Folder for kaggle/ and rehearsal.json (default runs/rehearsal).")
    p.add_argument("--test-rows", type=int, default=None, help="Use only the first N rows of the test file (CI).")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from arena_kd.common.errors import UserError

    try:
        return run(a.config or [str(OVERRIDES)], a.set, Path(a.out).resolve(), a.test_rows)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
