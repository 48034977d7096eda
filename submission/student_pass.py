"""Run the student over the test rows chunk by chunk under the time budget.

Rows are sorted by rendered length, longest first: the slowest and most memory-hungry batches
come first, so an out-of-memory shows up at once and the measured seconds per token (used for
the finish estimate) err on the slow side. Before each chunk the :class:`~submission.budget.Governor`
picks the mode (tta → single → short → stop); rows never reached keep ``mode=None`` and go to the
features-only stacker. A CUDA out-of-memory halves the batch token budget and retries the chunk;
any other failure stops the student and leaves the remaining rows to the fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from submission.budget import PASSES, Governor, format_seconds

log = logging.getLogger("arena_kd.submission")

MAX_OOM_RETRIES = 3


@dataclass
class StudentPass:
    """Per-row student outputs in the input order; NaN / None where a row was not run."""

    mode: np.ndarray  # object[n]: 'tta' | 'single' | 'short' | None
    orig: np.ndarray  # float32[n, 3]
    swap: np.ndarray  # float32[n, 3] (original A/B order), NaN without TTA
    max_length: np.ndarray  # int32[n], 0 where not run
    error: str | None = None
    chunks: list[dict] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int, error: str | None = None) -> "StudentPass":
        return cls(
            mode=np.full(n, None, dtype=object),
            orig=np.full((n, 3), np.nan, dtype=np.float32),
            swap=np.full((n, 3), np.nan, dtype=np.float32),
            max_length=np.zeros(n, dtype=np.int32),
            error=error,
        )


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # pragma: no cover - torch always importable here
        pass
    return "out of memory" in str(exc).lower()


def free_cuda() -> None:
    """Return cached CUDA memory after a failure or when the student is done (no-op on CPU)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


def run_student_pass(
    backend,
    df: pd.DataFrame,
    governor: Governor,
    *,
    max_length: int,
    degraded_max_length: int,
    tokens_per_batch: int,
    max_batch_size: int,
    chunk_rows: int,
    progress: bool = True,
) -> StudentPass:
    """Student logits for as many rows of ``df`` as the budget allows (see module docstring)."""
    n = len(df)
    res = StudentPass.empty(n)
    if n == 0:
        return res
    clock = governor.deadline.clock
    lens_full = backend.lengths(df, max_length)
    short_len = min(degraded_max_length, max_length)
    lens_short = np.minimum(lens_full, short_len)
    order = np.argsort(-lens_full, kind="stable")
    first_chunk = max(backend.n_devices, chunk_rows // 4)  # a small warm-up chunk gives an early estimate
    tpb, mbs = tokens_per_batch, max_batch_size
    bar = tqdm(total=n, unit="row", desc="student", disable=not progress, dynamic_ncols=True)
    pos = 0
    try:
        while pos < n:
            size = first_chunk if pos == 0 else chunk_rows
            idx = order[pos : pos + size]
            rest = order[pos:]
            remaining = {"tta": float(lens_full[rest].sum()), "single": float(lens_full[rest].sum()), "short": float(lens_short[rest].sum())}
            nxt = {"tta": float(lens_full[idx].sum()), "single": float(lens_full[idx].sum()), "short": float(lens_short[idx].sum())}
            mode = governor.choose(remaining, nxt)
            if mode is None:
                log.warning("time budget: student stopped after %d/%d rows (%.0fs left); the rest go features-only",
                            pos, n, governor.deadline.remaining())
                break
            length = short_len if mode == "short" else max_length
            t0 = clock()
            for attempt in range(MAX_OOM_RETRIES + 1):
                try:
                    orig, swap = backend.predict(df.iloc[idx], max_length=length, tta=mode == "tta",
                                                 tokens_per_batch=tpb, max_batch_size=mbs)
                    break
                except Exception as exc:  # noqa: BLE001 - any failure must still end in a valid file
                    if _is_oom(exc) and attempt < MAX_OOM_RETRIES and tpb > length:
                        free_cuda()
                        tpb, mbs = max(length, tpb // 2), max(1, mbs // 2)
                        log.warning("out of memory: retrying the chunk with tokens_per_batch=%d, max_batch_size=%d", tpb, mbs)
                        continue
                    raise
            seconds = clock() - t0
            tokens = float((lens_short if mode == "short" else lens_full)[idx].sum())
            governor.record(tokens * PASSES[mode], seconds)
            res.mode[idx] = mode
            res.orig[idx] = orig
            if swap is not None:
                res.swap[idx] = swap
            res.max_length[idx] = length
            res.chunks.append({"rows": int(len(idx)), "mode": mode, "tokens": int(tokens), "seconds": round(seconds, 3)})
            pos += len(idx)
            bar.update(len(idx))
            left_rows = order[pos:]
            est = governor.estimate(mode, float((lens_short if mode == "short" else lens_full)[left_rows].sum()))
            bar.set_postfix_str(f"mode={mode} finish≈{format_seconds(est or 0)} budget_left={format_seconds(governor.deadline.remaining())}")
    except Exception as exc:  # noqa: BLE001
        res.error = f"{type(exc).__name__}: {exc}"
        log.error("student inference failed after %d/%d rows (%s); the rest go features-only", pos, n, res.error)
    finally:
        bar.close()
    return res
