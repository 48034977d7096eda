"""The export step of `arena-kd distill`: references from the trained model(s), merged export, self-check.

1. Reference rows (``student.reference_rows`` training rows, rendered at the inference max length): probabilities
   of the trained student (``final: full``), or the mean of the k fold models' probabilities (``final: fold_soup``),
   each model run on its trained base (same quantization and dtype as in training). For a soup, both soup kinds
   and single folds are measured against that mean (:func:`student.soup.soup_drift`). ``final: fold_ensemble``
   exports each fold model as a member of its own, referenced to its own probabilities (:func:`export_ensemble`).
2. The merged model (:mod:`student.merge`: dequantised trained base, fp32 merge, one cast to ``export_dtype``).
3. :func:`arena_kd.llm.export.verify_export` on the written export, unquantized and at ``submission.quantization``;
   the results go into export.json (``verify``) and a drift beyond tolerance is printed with its numbers (the
   submission repeats the check on every device and does not use a copy that fails).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arena_kd.common.config import PipelineConfig
from arena_kd.common.errors import UserError
from arena_kd.common.io import atomic_write_json, json_hash, read_keyed_table
from arena_kd.common.metrics import softmax
from arena_kd.llm.export import (
    describe_drift,
    load_settings,
    reference_logits,
    render_settings,
    save_export,
    verify_export,
)
from arena_kd.llm.placement import free_accelerator_memory, sharded_model
from arena_kd.student.soup import adapter_logits, describe_soup, fold_mean_probs, reference_table, soup_drift


def fold_adapter_dirs(cfg: PipelineConfig, frame: pd.DataFrame) -> list[Path]:
    """The k fold students' adapter folders, from their fold files (UserError when one is gone)."""
    from arena_kd.kfold.runner import fold_path

    sdir = cfg.workdir_path / "student"
    dirs = []
    for k in sorted(frame["fold"].unique()):
        _, fm = read_keyed_table(fold_path(sdir, int(k)))
        if not fm.get("adapter_dir") or not Path(fm["adapter_dir"]).exists():
            raise UserError(f"{fold_path(sdir, int(k))}: fold adapter {fm.get('adapter_dir')} is missing; "
                            "rerun with --force")
        dirs.append(Path(fm["adapter_dir"]))
    return dirs


def verify_precisions(cfg: PipelineConfig) -> list[str]:
    """Loadings checked at export: unquantized (the export itself) and the submission's quantization."""
    q = cfg.submission.quantization
    return ["none"] if q == "none" else ["none", q]


def _tokenizer(cfg: PipelineConfig, adapter: Path, in_memory):
    if in_memory is not None:
        return in_memory[1]
    from arena_kd.llm.tokenizer import adapter_tokenizer, load_tokenizer

    tok = adapter_tokenizer(adapter)
    if tok is None:
        tok = load_tokenizer(cfg.student.model, cfg.workdir)
    return tok


def export_ensemble(cfg: PipelineConfig, frame: pd.DataFrame, fhashes: dict[str, str], *, force: bool) -> Path:
    """``final: fold_ensemble``: every fold student exported as its own member (``export/fold<k>/``, verified against
    that fold model's own reference probabilities), then ``ensemble.json`` naming them (llm.export). Each member is
    skipped when up to date, so an interrupted export resumes at the member it stopped in."""
    import shutil

    from arena_kd.llm.export import save_ensemble_manifest
    from arena_kd.llm.export_members import ENSEMBLE_FILE

    edir = cfg.workdir_path / "student" / "export"
    if (edir / "export.json").is_file():  # a single-model export from another final mode: replaced as a whole
        shutil.rmtree(edir)
    (edir / ENSEMBLE_FILE).unlink(missing_ok=True)  # until every member is in, the folder is no finished ensemble
    names = []
    for k, adapter in zip(sorted(int(f) for f in frame["fold"].unique()), fold_adapter_dirs(cfg, frame)):
        name = f"fold{k}"
        export_student(cfg, frame, adapter, None, {**fhashes, "member": name}, force=force, edir=edir / name)
        names.append(name)
    save_ensemble_manifest(edir, cfg, names, fhashes)
    print(f"[student] export: fold ensemble of {len(names)} members ({', '.join(names)}) → {edir}")
    return edir


def export_student(cfg: PipelineConfig, frame: pd.DataFrame, adapter: Path, in_memory, fhashes: dict[str, str], *,
                   force: bool, edir: Path | None = None) -> Path:
    """Write ``edir`` (default ``<workdir>/student/export``; see module docstring); skipped when up to date.
    ``in_memory``: (model, tokenizer) or None. Runs on rank 0 alone under a launch: an FSDP-sharded trained model
    (whose forwards need every rank) is not run; its gathered adapter is reloaded unsharded instead."""
    from arena_kd.data.render import render_batch_spans
    from arena_kd.student.merge import load_trained_base, merged_student

    s = cfg.student
    sdir = cfg.workdir_path / "student"
    edir = edir or sdir / "export"
    rs = render_settings(cfg)
    ehashes = {**fhashes, "export": json_hash({"dtype": s.export_dtype, "merged": s.export_merged, "render": rs,
                                               "ref": s.reference_rows, "verify": verify_precisions(cfg),
                                               "rule": "dequantised-fp32-merge"})}
    ej = edir / "export.json"
    if ej.is_file() and not force:
        from arena_kd.llm.export import read_json_record

        try:
            done = read_json_record(ej, "redoing the export")
        except UserError as exc:  # the export is replaced as a whole: nothing is lost by redoing it
            print(f"[student] {exc}")
            done = {}
        if done.get("hashes") == ehashes:
            print(f"[student] export: up to date ({edir}), skipped")
            return edir
    tok = _tokenizer(cfg, adapter, in_memory)
    ref_rows = frame.head(s.reference_rows).reset_index(drop=True)
    reference, soup_report = None, None
    if len(ref_rows):
        ids, fields = render_batch_spans(ref_rows, tok, rs["max_length"], rs["truncation"], rs["prompt_fraction"],
                                         template=rs["template"])
        ids = [list(map(int, r)) for r in ids]
        spans = [[*a, *b] for _, a, b in fields]  # the answers' ranges: what a model with answer pooling reads
        if s.final == "fold_soup":
            dirs = fold_adapter_dirs(cfg, frame)
            fold_logits = [adapter_logits(s.model, d, ids, cfg.workdir, spans) for d in dirs]
            probs = fold_mean_probs(fold_logits)
            soup_report = soup_drift(s.model, dirs, fold_logits, ids, sdir / "final" / "soups", cfg.workdir,
                                     answer_spans=spans)
            print(f"[student] fold soup ({s.soup}): {describe_soup(soup_report)}")
        elif in_memory is not None and not sharded_model(in_memory[0]):
            in_memory[0].eval()
            probs = softmax(reference_logits(in_memory[0], ids, spans).astype(np.float64))
        else:
            probs = softmax(adapter_logits(s.model, adapter, ids, cfg.workdir, spans).astype(np.float64))
        reference = reference_table(ref_rows["id"], ids, probs, spans)
    in_memory = None
    free_accelerator_memory()
    soup = s.final == "fold_soup"
    extra = {"reference_rows": len(ref_rows), "trained_quantization": s.model.quantization, "final": s.final,
             **({"member": fhashes["member"]} if "member" in fhashes else {}),
             "soup_mode": s.soup if soup else None, "soup": soup_report,
             "reference": "mean of the fold models' probabilities" if soup else "the trained model's probabilities",
             "merge_rule": "dequantised trained base, fp32 merge, one cast to export_dtype"}
    if s.export_merged:
        merged, tok2, info = merged_student(s.model, adapter, cfg.workdir)
        out = save_export(edir, cfg, merged_model=merged, tokenizer=tok2,
                          settings_load=load_settings(merged, tok2, info, cfg), hashes=ehashes, extra=extra,
                          reference=reference)
        del merged
    else:
        base, tok2, info = load_trained_base(s.model, adapter, cfg.workdir)
        out = save_export(edir, cfg, base_model=base, adapter_dir=adapter, tokenizer=tok2,
                          settings_load=load_settings(base, tok2, info, cfg), hashes=ehashes, extra=extra,
                          reference=reference)
        del base
    free_accelerator_memory()
    print(f"[student] export: {out} ({'merged' if s.export_merged else 'base + adapter'}, {s.export_dtype})")
    if reference is not None:
        record_verification(out, cfg)
    return out


def record_verification(export_dir: Path, cfg: PipelineConfig, precisions: list[str] | None = None) -> dict[str, Any]:
    """verify_export at each precision → printed, and stored in export.json under ``verify``."""
    results = {}
    for q in precisions or verify_precisions(cfg):
        dtype = cfg.student.export_dtype if q == "none" else cfg.submission.dtype
        try:
            d = verify_export(export_dir, quantization=q, dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - a loader that fails here would fail at submission too: say so, keep the export
            d = {"quantization": q, "dtype": dtype, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(f"[student] export check {q}/{dtype}: FAILED to load ({d['error']})")
        else:
            print(f"[student] export check {describe_drift(d)}")
            if not d["ok"]:
                print(f"[student] WARNING: the export loaded {q}/{dtype} is not the trained model within tolerance; "
                      f"submission will not use such a copy (it falls back to the features-only stacker)")
        free_accelerator_memory()
        results[q] = d
    path = export_dir / "export.json"
    settings = json.loads(path.read_text())
    settings["verify"] = {**settings.get("verify", {}), **results}
    atomic_write_json(path, settings)
    return results
