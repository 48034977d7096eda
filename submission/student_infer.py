"""The exported student on every visible device: one model copy per GPU, rows dealt across them.

``load_student`` loads ``arena_kd.llm.export.load_export`` once per device (``submission.quantization`` /
``dtype``; bitsandbytes 8-bit and 4-bit load on CPU too, so a CPU dress rehearsal runs the same quantization as
the T4s) and checks every copy with ``arena_kd.llm.export.verify_export`` against the trained model(s)' reference rows
stored in the export. Order of degradation for a copy, documented in kaggle/README.md: it fails to load or its
drift is beyond the tolerance of its precision (or a reference row gives non-finite logits, e.g. a Gemma2 fp16
overflow) → that copy is not used and the drift is logged with its numbers; its rows go to the copies that passed;
no copy left → ``load_student`` raises and every row takes the features-only stacker (submission.run). Not verified
means not used: a reference table that is missing, or holds fewer rows than export.json records, fails the copy like
drift does. Only an export made with ``student.reference_rows: 0`` (export.json records 0: the user chose no check)
is used unchecked, with a warning. It returns a
:class:`StudentBackend`. ``StudentBackend.predict`` deals the rows of a chunk (already
sorted by length) round-robin over the copies, runs them in one thread per GPU (CUDA kernels
release the GIL) through ``llm.predict.predict_tta`` / ``predict_logits`` (token-budgeted,
length-sorted batches), and returns the logits in the chunk's order.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("arena_kd.submission")


def visible_devices() -> list[str]:
    """['cuda:0', 'cuda:1', ...] for every visible GPU, else ['cpu']."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


@dataclass
class StudentReplica:
    model: Any
    tokenizer: Any
    device: str


class StudentBackend:
    """Student copies plus the render settings they were trained with (from export.json)."""

    def __init__(self, replicas: list[StudentReplica], render: dict[str, Any]):
        if not replicas:
            raise ValueError("StudentBackend needs at least one replica")
        self.replicas = replicas
        self.render = dict(render)
        self.tokenizer = replicas[0].tokenizer

    @property
    def n_devices(self) -> int:
        return len(self.replicas)

    def _render_kwargs(self) -> dict[str, Any]:
        """truncation / prompt_fraction / template from the export: render exactly as the student was trained."""
        return {
            "truncation": self.render.get("truncation", "budget"),
            "prompt_fraction": self.render.get("prompt_fraction", 0.2),
            "template": self.render.get("template", "blocks"),
        }

    def lengths(self, df: pd.DataFrame, max_length: int) -> np.ndarray:
        """int64[n]: rendered token count of every row at ``max_length`` (exact, same renderer as predict)."""
        from arena_kd.data.render import render_batch

        ids = render_batch(df, self.tokenizer, max_length=max_length, **self._render_kwargs())
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))

    def _one(self, replica: StudentReplica, df: pd.DataFrame, *, max_length: int, tta: bool,
             tokens_per_batch: int, max_batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        from arena_kd.llm.predict import predict_logits, predict_tta

        _use_device(replica.device)  # worker threads start on cuda:0: each sets its own GPU before any kernel
        kw = dict(max_length=max_length, tokens_per_batch=tokens_per_batch, max_batch_size=max_batch_size,
                  progress=False, **self._render_kwargs())
        if tta:
            out = predict_tta(replica.model, replica.tokenizer, df, **kw)
            return np.asarray(out["orig"], dtype=np.float32), np.asarray(out["swap"], dtype=np.float32)
        logits = predict_logits(replica.model, replica.tokenizer, df, swap=False, **kw)
        return np.asarray(logits, dtype=np.float32), None

    def predict(self, df: pd.DataFrame, *, max_length: int, tta: bool, tokens_per_batch: int,
                max_batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(orig float32[n,3], swap float32[n,3] in the original A/B order, or None without TTA), rows in ``df``
        order."""
        n = len(df)
        kw = dict(max_length=max_length, tta=tta, tokens_per_batch=tokens_per_batch, max_batch_size=max_batch_size)
        if self.n_devices == 1 or n <= 1:
            return self._one(self.replicas[0], df, **kw)
        shards = [np.arange(k, n, self.n_devices) for k in range(self.n_devices)]
        shards = [(r, s) for r, s in zip(self.replicas, shards) if len(s)]
        with ThreadPoolExecutor(max_workers=len(shards)) as pool:
            futures = [pool.submit(self._one, r, df.iloc[s], **kw) for r, s in shards]
            results = [f.result() for f in futures]
        orig = np.empty((n, 3), dtype=np.float32)
        swap = np.empty((n, 3), dtype=np.float32) if tta else None
        for (_, s), (o, w) in zip(shards, results):
            orig[s] = o
            if swap is not None:
                swap[s] = w
        return orig, swap


def _use_device(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(torch.device(device))


def check_copy(export_dir: str | Path, model, quantization: str, dtype: str, device: str) -> dict[str, Any] | None:
    """verify_export on one loaded copy (None when the export has no reference rows); logs the numbers. The caller has
    already made ``device`` current (load_student)."""
    from arena_kd.llm.export import describe_drift, read_export_settings, verify_export

    ref = Path(export_dir) / "reference_logits.parquet"
    if not ref.is_file():
        recorded = read_export_settings(export_dir).get("reference_rows")
        if recorded == 0:
            log.warning("%s: exported with student.reference_rows=0: the student on %s is used unchecked",
                        export_dir, device)
            return None
        raise RuntimeError(f"{ref} is missing (export.json records {recorded if recorded is not None else 'unknown'} "
                           "reference rows): the student cannot be verified, so it is not used")
    d = verify_export(export_dir, quantization=quantization, dtype=dtype, model=model)
    (log.info if d["ok"] else log.error)("student on %s vs the trained model(s): %s", device, describe_drift(d))
    return d


def load_student(export_dir: str | Path, *, quantization: str, dtype: str,
                 devices: list[str] | None = None) -> StudentBackend:
    """One verified copy of the exported student per device; raises when no copy loads and passes (the caller falls
    back)."""
    from arena_kd.llm.export import describe_drift, load_export

    devices = devices or visible_devices()
    replicas: list[StudentReplica] = []
    render: dict[str, Any] = {}
    first_error: Exception | None = None
    checks: dict[str, Any] = {}
    for dev in devices:
        try:
            _use_device(dev)
            model, tokenizer, settings = load_export(str(export_dir), quantization=quantization, dtype=dtype,
                                                     device=dev)
            model.eval()
            check = check_copy(export_dir, model, quantization, dtype, dev)
        except Exception as exc:  # noqa: BLE001 - a copy that does not load only costs its GPU's share
            first_error = first_error or exc
            log.error("student did not load on %s (%s: %s)%s", dev, type(exc).__name__, exc,
                      "; carrying on with the others" if len(devices) > 1 else "")
            continue
        checks[dev] = check
        if check is not None and not check["ok"]:
            err = RuntimeError(
                f"student export on {dev} ({quantization}/{check['dtype']}) is not verified as the trained model: "
                f"{describe_drift(check)}")
            first_error = first_error or err
            log.error("%s — this copy is not used", err)  # this device's drift, not an earlier device's error
            del model
            continue
        render = dict(settings.get("render", {}))
        replicas.append(StudentReplica(model, tokenizer, dev))
        log.info("student loaded on %s (quantization=%s, dtype=%s)", dev, quantization, dtype)
    if not replicas:
        raise first_error  # type: ignore[misc]
    backend = StudentBackend(replicas, render)
    backend.checks = checks
    return backend
