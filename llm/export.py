"""The student export: everything `submission` needs, loadable with no access to the training run.

Layout of ``<workdir>/student/export/``::

  model/                    merged classifier (safetensors, export_dtype) — or the base model when export_merged=false
  adapter/                  LoRA adapter (export_merged=false only)
  tokenizer/                tokenizer files
  export.json               render settings, load settings, predict settings, the resolved config, hashes
  reference_logits.parquet  input ids + probabilities of the TRAINED model(s) on a few training rows: the trained
                            student's, or for a fold soup the mean of the fold models' probabilities
  config.resolved.yaml

With ``student.final: fold_ensemble`` the folder holds one such export per fold student instead (``fold0/``,
``fold1/``, ... each laid out as above, its reference rows that fold model's own probabilities), an
``ensemble.json`` naming them, and ``config.resolved.yaml``; :func:`export_members` lists the exports either way.

``load_export(export_dir, quantization=..., dtype=...)`` returns (model, tokenizer, settings) using
plain transformers/peft, so it works without the llm/ package's training-time state.

``verify_export`` runs the reference rows through a loaded export and compares its probabilities with the stored
ones: max and mean |Δprob|, rows with non-finite logits (Gemma2 in fp16 can overflow), and a pass/fail against
the tolerance of the loaded precision (:func:`tolerance`). It runs at the end of `distill` and, once per device,
at the start of `submission` (submission.student_infer), where a copy that fails is not used.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena_kd.common.config import PipelineConfig, write_resolved
from arena_kd.common.errors import UserError
from arena_kd.common.io import atomic_write_json, read_keyed_table, write_keyed_table
from arena_kd.common.keys import LABELS, LOGIT_COLUMNS
from arena_kd.common.metrics import softmax
from arena_kd.llm.devices import DTYPE_NAMES, DTYPES, keep_bnb_4bit_layout_on_cpu, native_bf16
from arena_kd.llm.export_members import (  # noqa: F401 - re-exported: the export's names in one place
    ENSEMBLE_FILE,
    ENSEMBLE_REDUCTION,
    export_members,
    read_json_record,
)
from arena_kd.llm.head import HEAD_NAMES

EXPORT_FORMAT = 1
PROB_COLUMNS = tuple("prob_" + c.removeprefix("logit_") for c in LOGIT_COLUMNS)
"""Probability columns of ``reference_logits.parquet`` (beside ``LOGIT_COLUMNS``, their log), in class order."""

# Max |Δprob| allowed between a loaded export and the trained model(s) on the reference rows, by how the export is
# loaded. Assumptions, checked by the measurements in README "Export drift": rounding a merged model to fp16/bf16
# moves probabilities by ~1e-3; bitsandbytes LLM.int8 by a few 1e-2; NF4 by up to ~0.1 on small models. A fp32
# export loaded in fp32 is exact up to summation order.
TOLERANCE = {"none": 0.02, "8bit": 0.06, "4bit": 0.15}
TOLERANCE_FP32 = 1e-3
SOUP_TOLERANCE = 0.10
"""Added for a fold soup, whose reference is the mean of the fold models' probabilities: one averaged model is not
an average of models; its measured distance from the fold mean is stored in export.json ("soup") and in the README."""


def tolerance(quantization: str, dtype: str, soup: bool) -> float:
    """Max |Δprob| allowed for an export loaded with ``quantization``/``dtype`` (see TOLERANCE, SOUP_TOLERANCE)."""
    base = TOLERANCE_FP32 if quantization == "none" and dtype == "fp32" else TOLERANCE[quantization]
    return base + (SOUP_TOLERANCE if soup else 0.0)


def render_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """Rendering at inference: student.predict.max_length (else render.max_length), truncation, prompt_fraction."""
    return {
        "max_length": cfg.student.predict.max_length or cfg.render.max_length,
        "truncation": cfg.render.truncation,
        "prompt_fraction": cfg.render.prompt_fraction,
        "template": cfg.render.template,
    }


def load_settings(model, tokenizer, info: dict | None, cfg: PipelineConfig) -> dict[str, Any]:
    """How to load the exported model: attention implementation, softcapping, padding side, pad id."""
    info = dict(info or {})
    mcfg = model.config
    softcap = getattr(mcfg, "attn_logit_softcapping", None)
    attn = (info.get("attn_implementation") or getattr(mcfg, "_attn_implementation", None)
            or cfg.student.model.attn_implementation)
    return {
        "attn_implementation": attn if attn in ("eager", "sdpa", "flash_attention_2") else None,
        "disable_softcapping": bool(info.get("disable_softcapping", cfg.student.model.disable_softcapping)),
        "attn_logit_softcapping": softcap,
        "padding_side": info.get("padding_side") or getattr(tokenizer, "padding_side", "left"),
        "pad_token_id": getattr(mcfg, "pad_token_id", None),
        "num_labels": int(getattr(mcfg, "num_labels", 3)),
        "model_type": getattr(mcfg, "model_type", None),
    }


def _base_model(model):
    """Strip a peft wrapper (after merging) to the transformers model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_export(
    export_dir: Path,
    cfg: PipelineConfig,
    *,
    merged_model=None,
    base_model=None,
    adapter_dir: Path | None = None,
    tokenizer,
    settings_load: dict[str, Any],
    hashes: dict[str, str],
    extra: dict[str, Any] | None = None,
    reference=None,
) -> Path:
    """Write model (merged, or base + adapter), tokenizer and export.json into ``export_dir`` (replaced as a whole).

    Written into ``<export_dir>.tmp`` first and renamed, so a killed export never leaves a half folder.
    """
    export_dir = Path(export_dir)
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = DTYPES[cfg.student.export_dtype]
    if merged_model is not None:
        m = _base_model(merged_model).to(dtype)
        m.save_pretrained(tmp / "model", safe_serialization=True)
    else:
        if base_model is None or adapter_dir is None:
            raise ValueError("unmerged export needs base_model and adapter_dir")
        base = _base_model(base_model)
        if any("lora_" in n or ".base_layer." in n for n, _ in base.named_parameters()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError("unmerged export: the base model still carries LoRA layers; pass a clean base")
        base.to(dtype).save_pretrained(tmp / "model", safe_serialization=True)
        shutil.copytree(adapter_dir, tmp / "adapter")
    tokenizer.save_pretrained(tmp / "tokenizer")
    settings = {
        "format": EXPORT_FORMAT,
        "merged": merged_model is not None,
        "dtype": cfg.student.export_dtype,
        "labels": list(LABELS),
        "render": render_settings(cfg),
        "load": settings_load,
        "predict": cfg.student.predict.model_dump(mode="json"),
        "hashes": hashes,
        "config": cfg.to_dict(),
        **(extra or {}),
    }
    if reference is not None:
        write_keyed_table(tmp / "reference_logits.parquet", reference,
                          {"what": "input ids and probabilities (logit_* = their log) of the trained model(s) on the "
                                   "first training rows, original A/B order, no TTA: "
                                   + str(settings.get("reference", "the trained model's probabilities")),
                           "max_length": settings["render"]["max_length"],
                           "folds": (extra or {}).get("soup", {}) and (extra or {})["soup"].get("folds")})
    atomic_write_json(tmp / "export.json", settings)
    write_resolved(cfg, tmp)
    old = export_dir.with_name(export_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if export_dir.exists():
        export_dir.rename(old)
    tmp.rename(export_dir)
    shutil.rmtree(old, ignore_errors=True)
    return export_dir


def save_ensemble_manifest(export_dir: Path, cfg: PipelineConfig, members: list[str], hashes: dict[str, Any]) -> None:
    """``ensemble.json`` (member folders, reduction, hashes) and config.resolved.yaml in ``export_dir``; the
    manifest is written last, so a folder without it is never taken for a finished ensemble."""
    write_resolved(cfg, export_dir)
    atomic_write_json(export_dir / ENSEMBLE_FILE, {"format": EXPORT_FORMAT, "members": list(members),
                                                   "reduction": ENSEMBLE_REDUCTION, "hashes": hashes})


def read_export_settings(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / "export.json"
    if not path.is_file():
        raise UserError(f"{path}: not a student export (export.json missing) — run `arena-kd distill` first")
    return read_json_record(path, "rerun `arena-kd distill --force` to export again")


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise UserError(f"load_export: dtype must be auto, fp32, fp16 or bf16, got '{dtype}'")
        return DTYPES[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return torch.float32


def load_export(export_dir: str | Path, *, quantization: str = "none", dtype: str = "auto", device: str | None = None):
    """Load a student export → (model in eval mode, tokenizer, settings dict).

    quantization: none | 8bit | 4bit (bitsandbytes; the classification head stays unquantized).
    dtype: auto (bf16/fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16. settings["render"] has max_length,
    truncation, prompt_fraction; settings["load"] the attention/softcapping/padding settings.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    export_dir = Path(export_dir)
    settings = read_export_settings(export_dir)
    if quantization not in ("none", "8bit", "4bit"):
        raise UserError(f"load_export: quantization must be none, 8bit or 4bit, got '{quantization}'")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _resolve_dtype(dtype, device)
    load = settings.get("load", {})
    config = AutoConfig.from_pretrained(export_dir / "model")
    if load.get("disable_softcapping") and hasattr(config, "attn_logit_softcapping"):
        config.attn_logit_softcapping = None
    kwargs: dict[str, Any] = {"config": config, "dtype": torch_dtype}
    if load.get("attn_implementation"):
        kwargs["attn_implementation"] = load["attn_implementation"]
    if quantization != "none":
        skip = list(HEAD_NAMES)
        if quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch_dtype, llm_int8_skip_modules=skip,
            )
        kwargs["device_map"] = {"": device}
    # safetensors only (save_export writes nothing else): a pickled weights file in an artifacts folder is refused,
    # never unpickled
    model = AutoModelForSequenceClassification.from_pretrained(export_dir / "model", use_safetensors=True, **kwargs)
    if quantization == "none":
        model = model.to(device)
    if str(device).startswith("cpu") and quantization != "none":
        keep_bnb_4bit_layout_on_cpu(model)
    if not settings.get("merged", True):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, export_dir / "adapter")
    from arena_kd.llm.answer_pooling import install, wants_answer_pooling

    if wants_answer_pooling(model):  # the trained model's config.json says its head reads the answers too
        install(model)
    tokenizer = AutoTokenizer.from_pretrained(export_dir / "tokenizer")
    if load.get("padding_side"):
        tokenizer.padding_side = load["padding_side"]
    if tokenizer.pad_token_id is None and load.get("pad_token_id") is not None:
        tokenizer.pad_token_id = load["pad_token_id"]
    model.eval()
    return model, tokenizer, settings


def reference_probs(ref) -> "np.ndarray":
    """float64 [n,3] probabilities stored in a reference table (prob_* columns; older exports: softmax of logit_*)."""
    if all(c in ref.columns for c in PROB_COLUMNS):
        return ref[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    return softmax(ref[list(LOGIT_COLUMNS)].to_numpy(dtype=np.float64))


def reference_logits(model, input_ids: list[list[int]], answer_spans: list | None = None) -> "np.ndarray":
    """float32 [n,3] logits of ``model`` on token-id rows, one row at a time (no padding, so no padding effects).
    ``answer_spans``: per row (a0, a1, b0, b1), the answers' token ranges (the reference table's ``answer_spans``),
    needed by a model with answer pooling (``llm.answer_pooling``)."""
    from arena_kd.llm.answer_pooling import answer_spans as pooled_at
    from arena_kd.llm.answer_pooling import is_installed

    if is_installed(model) and answer_spans is None:
        raise UserError("this model pools the answers (model.answer_pooling) but its reference rows carry no "
                        "answer_spans: re-export it")
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i, ids in enumerate(input_ids):
            x = torch.tensor([list(ids)], dtype=torch.long, device=dev)
            at = None if answer_spans is None else torch.tensor(list(answer_spans[i]), dtype=torch.long).view(1, 2, 2)
            with pooled_at(model, at):
                out.append(model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float().cpu().numpy()[0])
    return np.asarray(out, dtype=np.float32).reshape(-1, 3)


def stored_answer_spans(ref) -> list | None:
    """The reference table's per-row (a0, a1, b0, b1) answer ranges, or None for a table written without them."""
    return [list(map(int, r)) for r in ref["answer_spans"]] if "answer_spans" in ref.columns else None


def prob_drift(got_logits, want_probs) -> dict[str, float | int]:
    """max / mean |Δprob| between logits [n,3] and probabilities [n,3]; rows with non-finite logits are counted, not
    compared."""
    got_logits = np.asarray(got_logits, dtype=np.float64)
    finite = np.isfinite(got_logits).all(axis=1)
    diff = np.zeros((0, 3))
    if finite.any():
        diff = np.abs(softmax(got_logits[finite]) - np.asarray(want_probs, dtype=np.float64)[finite])
    return {
        "rows": int(len(got_logits)),
        "nonfinite_rows": int((~finite).sum()),
        "max_abs_prob_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_prob_diff": float(diff.mean()) if diff.size else 0.0,
    }


def verify_export(export_dir: str | Path, *, quantization: str = "none", dtype: str = "auto", device: str | None = None,
                  model=None) -> dict[str, Any]:
    """Compare the export's predictions with the trained model(s)' probabilities in ``reference_logits.parquet``.

    Runs each stored reference row's ``input_ids`` through the loaded export (one row at a time: no padding) and
    returns {"rows", "expected_rows", "nonfinite_rows", "max_abs_prob_diff", "mean_abs_prob_diff",
    "max_abs_logit_diff" (of log-probabilities), "quantization", "dtype", "tolerance", "ok"}; ok = as many reference
    rows as export.json records (``reference_rows``: a table cut short checks less than the export claims), no
    non-finite row and max |Δprob| <= tolerance (see :func:`tolerance`; wider for a fold soup). Pass ``model`` to
    check a copy already loaded (then ``quantization`` and ``dtype`` only name how it was loaded).
    """
    export_dir = Path(export_dir)
    ref_path = export_dir / "reference_logits.parquet"
    if not ref_path.is_file():
        raise UserError(f"{ref_path}: no reference logits in this export (student.reference_rows=0)")
    ref, meta = read_keyed_table(ref_path)
    settings = read_export_settings(export_dir)
    if model is None:
        model, _, _ = load_export(export_dir, quantization=quantization, dtype=dtype, device=device)
    got = reference_logits(model, list(ref["input_ids"]), stored_answer_spans(ref))
    loaded_dtype = DTYPE_NAMES.get(getattr(model, "dtype", None), dtype)
    want = reference_probs(ref)
    out: dict[str, Any] = prob_drift(got, want)
    # logits are defined up to a constant per row: compare log-probabilities (log-softmax vs the stored log of the
    # reference)
    want_lp = np.log(np.clip(want, 1e-300, 1.0))
    finite = np.isfinite(got).all(axis=1)
    g = got[finite]
    top = g.max(axis=1, keepdims=True)
    got_lp = g - np.log(np.exp(g - top).sum(axis=1, keepdims=True)) - top
    out["max_abs_logit_diff"] = float(np.abs(got_lp - want_lp[finite]).max()) if finite.any() else 0.0
    soup = bool(meta.get("folds")) or settings.get("final") == "fold_soup"
    tol = tolerance(quantization, loaded_dtype if loaded_dtype in DTYPES else "fp16", soup)
    expected = settings.get("reference_rows")
    out.update({"expected_rows": expected, "quantization": quantization, "dtype": loaded_dtype, "tolerance": tol,
                "ok": out["nonfinite_rows"] == 0 and out["max_abs_prob_diff"] <= tol
                and (expected is None or out["rows"] == int(expected))})
    return out


def describe_drift(d: dict[str, Any]) -> str:
    """One line: '8bit/fp16: max |Δp| 0.0123, mean 0.0031 (tolerance 0.06), 0/16 rows non-finite — ok'."""
    expected = d.get("expected_rows")
    short = expected is not None and d["rows"] != int(expected)
    verdict = "ok" if d["ok"] else ("NOT VERIFIED" if short else "BEYOND TOLERANCE")
    rows = f" (export.json records {expected})" if short else ""
    return (f"{d['quantization']}/{d['dtype']}: max |Δp| {d['max_abs_prob_diff']:.4f}, "
            f"mean {d['mean_abs_prob_diff']:.4f} (tolerance {d['tolerance']:g}), "
            f"{d['nonfinite_rows']}/{d['rows']}{rows} rows non-finite — {verdict}")
