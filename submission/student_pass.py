"""Run the student over the test rows chunk by chunk under the time budget.

Rows are sorted by rendered length, longest first: the slowest and most memory-hungry batches
come first, so an out-of-memory shows up at once and the measured seconds per token (used for
the finish estimate) err on the slow side. Before each chunk the :class:`~submission.budget.Governor`
picks the mode (tta → single → short → stop); rows never reached keep ``mode=None`` and go to the
features-only stacker.

A failure costs only the rows it touches, and every such row carries its ``reason``:
- rendering/tokenizing (the length pass) runs under a ``try``; when it fails, the rows are bisected
  until the failing ones are isolated — they skip the student, the others go on;
- a CUDA out-of-memory halves the batch token budget and retries the chunk; any other failure of a
  chunk (or a retry that still runs out of memory) sends that chunk's rows to the fallback and the
  next chunk is tried; ``MAX_CONSECUTIVE_FAILURES`` failed chunks in a row (a dead GPU, say) stop the student;
- rows whose logits are not finite (an fp16 overflow, say) are dropped from the student's output and
  counted (``nonfinite_rows``), so they never reach the stacker as "missing" features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from arena_kd.common.durations import format_seconds
from arena_kd.submission.budget import PASSES, Governor

log = logging.getLogger("arena_kd.submission")

MAX_OOM_RETRIES = 3
MAX_CONSECUTIVE_FAILURES = 3
"""Failed chunks in a row after which the student is given up (a lost GPU fails every chunk, and fast)."""


def short_reason(exc: BaseException) -> str:
    """'Type: first line of the message' (at most ~200 characters) for logs, paths.csv and run.json."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg[:200]}" if msg else type(exc).__name__


@dataclass
class StudentPass:
    """Per-row student outputs in the input order; NaN / None where a row was not run."""

    mode: np.ndarray  # object[n]: 'tta' | 'single' | 'short' | None
    orig: np.ndarray  # float32[n, 3]
    swap: np.ndarray  # float32[n, 3] (original A/B order), NaN without TTA
    max_length: np.ndarray  # int32[n], 0 where not run
    reason: np.ndarray  # object[n]: why a row has no student logits (None where it has them)
    members: np.ndarray  # int32[n]: models averaged in a row's logits (1 for one model, more in a fold ensemble:
    # submission.ensemble), 0 = no student logits
    error: str | None = None
    chunks: list[dict] = field(default_factory=list)
    nonfinite_rows: int = 0  # rows whose student logits were NaN/inf (dropped, never passed on)

    @classmethod
    def empty(cls, n: int, error: str | None = None) -> "StudentPass":
        return cls(
            mode=np.full(n, None, dtype=object),
            orig=np.full((n, 3), np.nan, dtype=np.float32),
            swap=np.full((n, 3), np.nan, dtype=np.float32),
            max_length=np.zeros(n, dtype=np.int32),
            reason=np.full(n, None, dtype=object),
            error=error,
            members=np.zeros(n, dtype=np.int32),
        )

    def drop(self, rows: np.ndarray, reason: str) -> None:
        """Take ``rows`` away from the student (they go to the fallback) with ``reason``."""
        self.mode[rows], self.max_length[rows] = None, 0
        self.orig[rows], self.swap[rows] = np.nan, np.nan
        self.reason[rows] = reason
        self.members[rows] = 0


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # pragma: no cover - torch always importable here
        pass
    return "out of memory" in str(exc).lower()


def lengths_isolating_failures(backend, df: pd.DataFrame, max_length: int) -> tuple[np.ndarray, dict[int, str]]:
    """(int64[n] rendered lengths, {row position: reason} for rows that cannot be rendered/tokenized).

    One call for the whole frame when it works; on a failure the rows are bisected until the failing
    rows are isolated (k bad rows cost about 2·k·log2(n) calls). When failures pile up (more than 32
    rows and a tenth of the frame: the tokenizer itself is broken, not a row), the rest is given up.
    """
    n = len(df)
    lens = np.zeros(n, dtype=np.int64)
    failed: dict[int, str] = {}
    pending = [np.arange(n)]
    while pending:
        idx = pending.pop()
        if len(failed) > max(32, n // 10):
            for rest in [idx, *pending]:
                failed.update({int(i): failed[next(iter(failed))] for i in rest})
            break
        try:
            out = np.asarray(backend.lengths(df.iloc[idx], max_length), dtype=np.int64)
            if out.shape != (len(idx),):
                raise ValueError(f"lengths returned shape {out.shape} for {len(idx)} rows")
            lens[idx] = out
        except Exception as exc:  # noqa: BLE001 - a row the tokenizer refuses only costs that row
            if len(idx) == 1:
                failed[int(idx[0])] = f"rendering/tokenizing failed: {short_reason(exc)}"
            else:
                half = len(idx) // 2
                pending += [idx[half:], idx[:half]]
    return lens, failed


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
    # here, not at module level: importing the submission must not load torch (the fallback answer comes first)
    from arena_kd.llm.placement import free_accelerator_memory

    n = len(df)
    res = StudentPass.empty(n)
    if n == 0:
        return res
    clock = governor.deadline.clock
    lens_full, untokenizable = lengths_isolating_failures(backend, df, max_length)
    if untokenizable:
        bad = np.fromiter(untokenizable, dtype=np.int64)
        for i, why in untokenizable.items():
            res.reason[i] = why
        log.error("%d row(s) could not be rendered for the student (e.g. id %s: %s); they use the fallback",
                  len(bad), df["id"].iloc[bad[0]], untokenizable[int(bad[0])])
    short_len = min(degraded_max_length, max_length)
    lens_short = np.minimum(lens_full, short_len)
    usable = np.array([i for i in range(n) if i not in untokenizable], dtype=np.int64)
    order = usable[np.argsort(-lens_full[usable], kind="stable")]
    m = len(order)
    first_chunk = max(backend.n_devices, chunk_rows // 4)  # a small warm-up chunk gives an early estimate
    tpb, mbs = tokens_per_batch, max_batch_size
    bar = tqdm(total=m, unit="row", desc="student", disable=not progress, dynamic_ncols=True)
    pos, failed_in_a_row, failures = 0, 0, []
    stop_reason = None
    try:
        while pos < m:
            size = first_chunk if pos == 0 else chunk_rows
            idx = order[pos : pos + size]
            rest = order[pos:]
            remaining = {"tta": float(lens_full[rest].sum()), "single": float(lens_full[rest].sum()),
                         "short": float(lens_short[rest].sum())}
            nxt = {"tta": float(lens_full[idx].sum()), "single": float(lens_full[idx].sum()),
                   "short": float(lens_short[idx].sum())}
            mode = governor.choose(remaining, nxt)
            if mode is None:
                stop_reason = "not reached: time budget"
                log.warning("time budget: student stopped after %d/%d rows (%.0fs left); the rest go features-only",
                            pos, m, governor.deadline.remaining())
                break
            length = short_len if mode == "short" else max_length
            t0 = clock()
            try:
                for attempt in range(MAX_OOM_RETRIES + 1):
                    try:
                        orig, swap = backend.predict(df.iloc[idx], max_length=length, tta=mode == "tta",
                                                     tokens_per_batch=tpb, max_batch_size=mbs)
                        break
                    except Exception as exc:  # noqa: BLE001 - any failure must still end in a valid file
                        if _is_oom(exc) and attempt < MAX_OOM_RETRIES and tpb > length:
                            free_accelerator_memory()
                            tpb, mbs = max(length, tpb // 2), max(1, mbs // 2)
                            log.warning("out of memory: retrying the chunk with tokens_per_batch=%d, max_batch_size=%d",
                                        tpb, mbs)
                            continue
                        raise
                orig = np.asarray(orig, dtype=np.float32)
                if orig.shape != (len(idx), 3) or (mode == "tta" and (swap is None or np.shape(swap) != (len(idx), 3))):
                    swap_shape = None if swap is None else np.shape(swap)
                    raise ValueError(f"student returned logits of shape {orig.shape}/{swap_shape} for {len(idx)} rows")
            except Exception as exc:  # noqa: BLE001 - this chunk's rows go to the fallback, the next chunk is tried
                why = short_reason(exc)
                free_accelerator_memory()
                res.drop(idx, f"student chunk failed: {why}")
                failures.append(why)
                failed_in_a_row += 1
                res.chunks.append({"rows": int(len(idx)), "mode": mode, "error": why})
                log.error("student chunk of %d rows failed (%s); those rows use the fallback", len(idx), why)
                pos += len(idx)
                bar.update(len(idx))
                if failed_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                    stop_reason = (f"not reached: student given up after {failed_in_a_row} failed chunks in a row "
                                   f"({why})")
                    log.error("%d student chunks failed in a row; the remaining %d rows go features-only",
                              failed_in_a_row, m - pos)
                    break
                continue
            failed_in_a_row = 0
            seconds = clock() - t0
            tokens = float((lens_short if mode == "short" else lens_full)[idx].sum())
            governor.record(tokens * PASSES[mode], seconds)
            finite = np.isfinite(orig).all(axis=1)
            if swap is not None:
                swap = np.asarray(swap, dtype=np.float32)
                finite &= np.isfinite(swap).all(axis=1)
            good, bad = idx[finite], idx[~finite]
            res.mode[good], res.members[good] = mode, 1
            res.orig[good] = orig[finite]
            if swap is not None:
                res.swap[good] = swap[finite]
            res.max_length[good] = length
            if len(bad):
                res.reason[bad] = "non-finite student logits"
                res.nonfinite_rows += int(len(bad))
            res.chunks.append({"rows": int(len(idx)), "mode": mode, "tokens": int(tokens), "seconds": round(seconds, 3),
                               **({"nonfinite_rows": int(len(bad))} if len(bad) else {})})
            pos += len(idx)
            bar.update(len(idx))
            left_rows = order[pos:]
            est = governor.estimate(mode, float((lens_short if mode == "short" else lens_full)[left_rows].sum()))
            bar.set_postfix_str(f"mode={mode} finish≈{format_seconds(est or 0)} "
                                f"budget_left={format_seconds(governor.deadline.remaining())}")
    except Exception as exc:  # noqa: BLE001 - bookkeeping failed: keep what is done, the rest go features-only
        res.error = short_reason(exc)
        stop_reason = f"not reached: student stopped ({res.error})"
        log.error("student inference failed after %d/%d rows (%s); the rest go features-only", pos, m, res.error)
    finally:
        bar.close()
    if stop_reason:
        left = order[pos:]
        untouched = np.array([res.reason[i] is None and res.mode[i] is None for i in left], dtype=bool)
        res.reason[left[untouched]] = stop_reason
    if failures and res.error is None:
        res.error = f"{len(failures)} student chunk(s) failed (first: {failures[0]})"
    if res.nonfinite_rows:
        first = int(np.flatnonzero(res.reason == "non-finite student logits")[0])
        log.error("%d row(s) got non-finite student logits (e.g. id %s); they use the fallback, not the stacker",
                  res.nonfinite_rows, df["id"].iloc[first])
    return res
