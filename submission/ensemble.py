"""The student of a submission when it is several models (``student.final: fold_ensemble``), and the one-model case.

The members (``llm.export.export_members``: one folder for a single export, the fold students of an ensemble) run one
after the other, each loaded on every device, run over the rows (``student_pass.run_student_pass``) and freed before
the next is loaded — so the GPUs hold one 9B copy at a time, as with a single model, and the ensemble costs time,
not memory.

Time: member ``j`` of ``k`` may use ``1/(k-j)`` of the time left beyond the reserve when it starts (the others'
shares are added to its governor's reserve). Each member degrades on its own (tta → single → short → stop), and a
member that ends early leaves its unused time to the next.

Combining (:func:`combine_passes`): the first member that reached a row sets that row's mode and max length; the
members that ran the row in that same mode and length are averaged (``common.metrics.mean_log_softmax``, per
orientation: the reduction of the fold students' held-out rows the stacker was fitted with), the others' outputs for
that row are ignored. ``StudentPass.members`` counts the models each row's logits average (paths.csv ``members``). A
member that fails to load or crashes costs only its share of the average: the rows keep the members that ran them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from arena_kd.common.metrics import mean_log_softmax
from arena_kd.submission.budget import Deadline, Governor
from arena_kd.submission.student_pass import StudentPass, run_student_pass, short_reason

log = logging.getLogger("arena_kd.submission")


def member_reserve(remaining_s: float, reserve_s: float, members_left: int) -> float:
    """The governor reserve of the member about to run: the run's reserve plus the later members' shares of the time
    left beyond it (an equal split of what is left among this member and the later ones)."""
    usable = max(0.0, remaining_s - reserve_s)
    return reserve_s + usable * (members_left - 1) / max(members_left, 1)


def combine_passes(passes: list[StudentPass], names: list[str] | None = None) -> StudentPass:
    """One StudentPass from the members' passes (module doc: the first member to reach a row sets its mode and
    length; the members that ran it alike are averaged). A single pass is returned as it is."""
    if not passes:
        raise ValueError("combine_passes needs at least one pass")
    names = names or [f"member{j}" for j in range(len(passes))]
    n = len(passes[0].mode)
    if len(passes) == 1:
        return passes[0]
    out = StudentPass.empty(n)
    for i in range(n):
        ran = [p for p in passes if p.mode[i] is not None]
        if not ran:
            out.reason[i] = next((p.reason[i] for p in passes if p.reason[i] is not None), None)
            continue
        first = ran[0]
        alike = [p for p in ran if p.mode[i] == first.mode[i] and p.max_length[i] == first.max_length[i]]
        out.mode[i], out.max_length[i] = first.mode[i], first.max_length[i]
        out.orig[i] = mean_log_softmax([p.orig[i:i + 1] for p in alike])[0]
        if first.mode[i] == "tta":
            out.swap[i] = mean_log_softmax([p.swap[i:i + 1] for p in alike])[0]
        out.members[i] = len(alike)
    errors = [f"{name}: {p.error}" for name, p in zip(names, passes) if p.error]
    out.error = "; ".join(errors) if errors else None
    out.chunks = [{"member": name, **c} for name, p in zip(names, passes) for c in p.chunks]
    out.nonfinite_rows = int(sum(p.nonfinite_rows for p in passes))
    return out


def run_student_members(members: list[Path], df: pd.DataFrame, deadline: Deadline, *, reserve_s: float, sub,
                        load: Callable[..., Any], devices: list[str] | None, default_max_length: int,
                        progress: bool = True) -> tuple[StudentPass, list[dict]]:
    """(the combined StudentPass, the governors' history) for ``members`` run one after the other (module doc).
    ``load(export_dir, quantization=, dtype=, devices=)`` returns a backend or raises; ``sub``: SubmissionConfig."""
    from arena_kd.llm.placement import free_accelerator_memory  # torch: only once a student is about to run

    n, k = len(df), len(members)
    names = [m.name if k > 1 else "student" for m in members]
    passes: list[StudentPass] = []
    history: list[dict] = []
    for j, (member, name) in enumerate(zip(members, names)):
        what = f"ensemble member {name} ({j + 1}/{k})" if k > 1 else "student"
        if deadline.remaining() <= reserve_s:
            passes.append(StudentPass.empty(n, error=f"{what}: no time left"))
            passes[-1].reason[:] = "not reached: time budget"
            log.warning("time budget: no time left for %s", what)
            continue
        governor = Governor(deadline, reserve_s=member_reserve(deadline.remaining(), reserve_s, k - j),
                            safety=sub.safety_factor, allow_tta=sub.predict.tta)
        try:
            backend = load(member, quantization=sub.quantization, dtype=sub.dtype, devices=devices)
        except Exception as exc:  # noqa: BLE001 - a load failure costs this member's share only
            prefix = f"{what} failed to load" if k > 1 else "student failed to load"
            passes.append(StudentPass.empty(n, error=f"{prefix}: {short_reason(exc)}"))
            log.error("%s — %s", passes[-1].error,
                      "its rows keep the other members" if k > 1 else "every row uses the fallback")
            continue
        max_length = sub.predict.max_length or backend.render.get("max_length") or default_max_length
        if k > 1:
            log.info("%s: up to %.0fs of the %.0fs left", what, deadline.remaining() - governor.reserve_s,
                     deadline.remaining())
        passes.append(run_student_pass(
            backend, df, governor, max_length=int(max_length), degraded_max_length=sub.degraded_max_length,
            tokens_per_batch=sub.predict.tokens_per_batch, max_batch_size=sub.predict.max_batch_size,
            chunk_rows=sub.chunk_rows, progress=progress))
        history += [{"member": name, **h} if k > 1 else h for h in governor.history]
        del backend  # free the GPUs for the next member (and the stacker's embedder, if any)
        free_accelerator_memory()
    combined = combine_passes(passes, names)
    if k > 1:
        reached = combined.members[combined.members > 0]
        log.info("fold ensemble: %d of %d rows averaged over all %d members, %d over fewer",
                 int((reached == k).sum()), n, k, int(((reached > 0) & (reached < k)).sum()))
    return combined, history
