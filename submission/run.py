"""`arena-kd submission`: test pairs → student (swap TTA, all GPUs) → stacker → temperature → submission.csv.

Order of work, chosen so that a valid file exists as early as possible and whatever happens:

1. read the test pairs and the id order (sample_submission.csv, else the test file);
2. the features-only stacker on every row (or, without a stacker, the class prior) — validated and
   written to ``out`` at once: from here on a valid submission exists;
3. the student under the time budget (:mod:`submission.budget`), chunk by chunk, degrading
   tta → single → short → stop; a student that fails to load or crashes only loses rows; a fold ensemble's
   members run one after the other on shares of the time (:mod:`submission.ensemble`);
4. the stacker (with the student's logits) on every row the student reached; the file is
   validated again and replaced atomically.

Each row's path is written to ``<out stem>.paths.csv`` (id, student mode, max_length, head, the models averaged
in its student logits, and the reason when a row did not get the student) and counted on the console; a summary goes to
``<out stem>.run.json`` (counts, reasons, non-finite logit rows, test-file repairs) next to the resolved config.

Nothing about the test file's contents can stop the run (:mod:`arena_kd.submission.tolerant_reader` repairs it, and
the student only loses the rows it fails on); only a broken environment — no readable test file or
``id`` column, an unwritable output — ends in a one-line error.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from arena_kd.common.config import PipelineConfig, write_resolved
from arena_kd.common.durations import format_seconds, parse_time_budget
from arena_kd.common.errors import UserError
from arena_kd.common.io import atomic_write_csv, atomic_write_json
from arena_kd.common.keys import LABELS
from arena_kd.data.text import read_id_column
from arena_kd.submission.budget import Deadline
from arena_kd.submission.ensemble import run_student_members
from arena_kd.submission.fallback import (
    class_prior,
    fallback_losses,
    load_stacker_or_none,
    stacker_probs,
    student_beats_prior,
    student_softmax,
)
from arena_kd.submission.student_pass import StudentPass, short_reason
from arena_kd.submission.validate import valid_rows, write_submission

log = logging.getLogger("arena_kd.submission")

HEADS = ("stacker", "features_only", "student_softmax", "prior")
"""What produced a row's probabilities: stacker on student logits, features-only stacker,
the student alone (no stacker available), or the class prior (neither)."""


@dataclass
class SubmissionResult:
    out: Path
    paths: pd.DataFrame  # id, student, max_length, head, reason
    counts: dict[str, int]
    seconds: float


def _ensure_console_logging() -> None:
    """Show the run's log lines on stderr unless the caller configured logging already."""
    root = logging.getLogger("arena_kd")
    if root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    if not root.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[%(asctime)s submission] %(message)s", "%H:%M:%S"))
        root.addHandler(h)


def load_student(export_dir, *, quantization, dtype, devices=None):
    """Indirection so tests can substitute a fake backend (see tests/test_submission.py)."""
    from arena_kd.submission.student_infer import load_student as _load

    return _load(export_dir, quantization=quantization, dtype=dtype, devices=devices)


def _read_test(path: str) -> pd.DataFrame:
    from arena_kd.submission.tolerant_reader import read_test_pairs

    return read_test_pairs(path)


def _sample_submission_path(cfg: PipelineConfig, test: str | None) -> Path | None:
    """sample_submission.csv next to an explicit --test file, else data.sample_submission (None, logged, when that
    file is missing: the test file's ids are enough to answer)."""
    if test is not None and (cfg.data.test is None or Path(test).resolve() != Path(cfg.data.test).resolve()):
        cand = Path(test).with_name("sample_submission.csv")
        return cand if cand.is_file() else None
    if cfg.data.sample_submission:
        p = Path(cfg.data.sample_submission)
        if not p.is_file():
            log.error("%s: data.sample_submission not found; the file follows the test file's ids", p)
            return None
        return p
    return None


@dataclass
class IdOrder:
    """Row order of submission.csv and how it was reached (all of it goes to ``run.json``)."""

    ids: list[str]
    sample_ids_without_test_row: int = 0
    test_rows_not_in_sample: int = 0
    sample_error: str | None = None  # why a sample submission beside the test file was not used


def submission_ids(df: pd.DataFrame, sample_path: Path | None) -> IdOrder:
    """Row order of submission.csv: the sample submission's ids when there is a readable one, else the test file's.

    Kaggle scores the sample submission's ids, so those are what the file must hold. A mismatch is not refused
    (a hidden test row the CSV parser could not recover would otherwise cost the whole run): test rows absent from
    the sample are left out, sample ids absent from the test rows get the fallback answer (:func:`_frame`); both
    are logged and counted in ``run.json``. A sample that cannot be read or has no ``id`` column (or no ids) is not
    needed either: the test file's ids answer, and why is logged and recorded (``sample_error``).
    """
    test_ids = df["id"].astype(str).tolist()
    if sample_path is None:
        return IdOrder(test_ids)
    try:
        ids = read_id_column(sample_path)
        if not ids and test_ids:
            raise ValueError(f"{sample_path}: no ids")
    except Exception as exc:  # noqa: BLE001 - unreadable, no id column: the test file's ids are enough
        why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        log.error("sample submission not used (%s); the file follows the test file's %d ids", why, len(test_ids))
        return IdOrder(test_ids, sample_error=why)
    known = set(test_ids)
    missing = [i for i in ids if i not in known]
    extra = len(known - set(ids))
    if missing or extra:
        log.error("%s: ids differ from the test file (%d sample ids have no test row, e.g. '%s'; %d test rows are "
                  "not in the sample); the file follows the sample: missing rows get the fallback answer, extra rows "
                  "are left out",
                  sample_path, len(missing), missing[0] if missing else "-", extra)
    return IdOrder(ids, len(missing), extra)


def _frame(test_ids: pd.Series, probs: np.ndarray, ids: list[str], fill: np.ndarray) -> pd.DataFrame:
    """The answer for exactly ``ids``: test rows by id (rows outside ``ids`` left out), ``fill`` (the class prior)
    for ids the test file lacks (see :func:`submission_ids`)."""
    out = pd.DataFrame({"id": test_ids.astype(str).to_numpy()})
    out[list(LABELS)] = probs
    wanted = set(ids)
    if len(ids) == len(out) and wanted == set(out["id"]):
        return out
    out = out[out["id"].isin(wanted)]
    have = set(out["id"])
    missing = [i for i in ids if i not in have]
    if missing:
        add = pd.DataFrame({"id": missing})
        add[list(LABELS)] = np.tile(np.asarray(fill, dtype=np.float64), (len(missing), 1))
        out = pd.concat([out, add], ignore_index=True)
    return out


def answering_models(stacker, head: np.ndarray, spass: StudentPass) -> np.ndarray:
    """object[n]: the stacking candidate that answered each row (``stacker.json`` ``selection``), for paths.csv.

    ``head`` says stacker / features_only, but the stacker routes each student mode to the model chosen out of fold
    for it (``arena_kd.blend.stacker`` module doc), which may be the features-only model or the student with
    temperature. Rows without a stacker keep their head name.
    """
    out = np.asarray(head, dtype=object).copy()
    if stacker is None or not hasattr(stacker, "chosen"):
        return out
    try:
        out[head == "features_only"] = stacker.chosen("none")
        st = np.flatnonzero(head == "stacker")
        for tta in (True, False):
            sel = st[(spass.mode[st] == "tta") == tta]
            if len(sel):
                modes = stacker.row_modes(len(sel), {"orig": None, "swap": True if tta else None,
                                                     "max_length": spass.max_length[sel]})
                out[sel] = [stacker.chosen(m) for m in modes]
    except Exception as exc:  # noqa: BLE001 - bookkeeping only: never costs the submission
        log.warning("could not name the stacking model per row (%s)", short_reason(exc))
    return out


def run_submission(
    cfg: PipelineConfig,
    test: str | None = None,
    out: str | None = None,
    time_budget: str | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    devices: list[str] | None = None,
    progress: bool = True,
) -> SubmissionResult:
    """Write a validated submission.csv inside the time budget, whatever fails (see module docstring)."""
    _ensure_console_logging()
    sub = cfg.submission
    budget_s = parse_time_budget(time_budget if time_budget is not None else sub.time_budget,
                                 "--time-budget" if time_budget is not None else "submission.time_budget")
    deadline = Deadline(budget_s, clock)
    test_path = test or cfg.data.test
    if not test_path:
        raise UserError("no test file: pass --test or set data.test in the config")
    wd = cfg.workdir_path
    out_path = Path(out or sub.out or wd / "submission.csv")
    student_dir = Path(sub.student_dir) if sub.student_dir else wd / "student" / "export"
    stack_dir = Path(sub.stack_dir) if sub.stack_dir else wd / "stacking"

    df = _read_test(str(test_path))
    order = submission_ids(df, _sample_submission_path(cfg, test))
    ids, ids_without_row = order.ids, order.sample_ids_without_test_row
    n = len(df)
    if n == 0:  # nothing to answer: a header-only file is the valid submission
        log.warning("%s: no data rows; writing a header-only %s", test_path, out_path)
    log.info("%d test rows from %s; budget %s; output %s", n, test_path, format_seconds(budget_s), out_path)

    # 1. the answer that needs no student, written at once ------------------------------------
    stacker = load_stacker_or_none(stack_dir, cfg.stacking.embedding_model) if n else None
    head = np.full(n, "prior", dtype=object)
    t0 = clock()
    probs = np.full((n, 3), np.nan)
    if stacker is not None:
        try:
            fo = np.asarray(stacker_probs(stacker, df, None, sub.swap_average), dtype=np.float64)
            ok = valid_rows(fo) if fo.shape == probs.shape else np.zeros(n, dtype=bool)
            probs[ok], head[ok] = fo[ok], "features_only"
            if not ok.all():
                log.error("features-only stacker gave invalid probabilities for %d row(s); they use the class prior",
                          int((~ok).sum()))
        except Exception as exc:  # noqa: BLE001
            log.warning("features-only stacker failed (%s); using the class prior", short_reason(exc))
    prior = None
    if (head == "prior").any() or ids_without_row:  # read the training labels only when some row needs them
        prior, source = class_prior(cfg.data.train)
        probs[head == "prior"] = prior
        log.info("fallback answer: %s = %s", source, np.round(prior, 4).tolist())
    fallback_seconds = clock() - t0
    try:
        write_submission(out_path, _frame(df["id"], probs, ids, prior), ids, sub.clip_eps)
    except OSError as exc:  # a broken environment, not the data: the one failure left, in one line
        raise UserError(f"{out_path}: cannot write the submission "
                        f"({exc.strerror or exc}: {exc.filename or out_path})") from None
    log.info("provisional %s written (%s, %s)", out_path, head[0] if n else "empty", format_seconds(fallback_seconds))

    # 2. the student under the budget ----------------------------------------------------------
    reserve = sub.reserve_s + 1.5 * fallback_seconds
    history: list[dict] = []  # the members' governors' mode choices (submission.ensemble), for run.json
    spass = StudentPass.empty(n)
    fallback_probs, fallback_head = probs.copy(), head.copy()
    no_stacker: dict | None = None  # without a stacker: the OOF losses deciding student softmax vs prior, and why
    try:
        if n == 0:
            pass
        elif deadline.remaining() <= reserve:
            spass.error = "no time left for the student"
            log.warning("time budget: %s left, %s reserved — skipping the student",
                        format_seconds(deadline.remaining()), format_seconds(reserve))
        else:
            try:  # one export, or the members of a fold ensemble (submission.ensemble)
                from arena_kd.llm.export_members import export_members

                members = export_members(student_dir)
            except Exception as exc:  # noqa: BLE001 - an unreadable manifest → fallback for every row
                members = []
                spass.error = f"student failed to load: {short_reason(exc)}"
                log.error("%s — every row uses the fallback", spass.error)
            if members:
                spass, history = run_student_members(members, df, deadline, reserve_s=reserve, sub=sub,
                                                     load=load_student, devices=devices,
                                                     default_max_length=cfg.render.max_length, progress=progress)

        # 3. student rows through the stacker (only rows with finite logits: see student_pass) ---------
        for tta in (True, False):
            sel = np.flatnonzero([(m == "tta") == tta and m is not None for m in spass.mode])
            if not len(sel):
                continue
            orig = spass.orig[sel]
            swap = spass.swap[sel] if tta else None
            try:
                if stacker is not None:
                    student = {"orig": orig, "swap": swap, "max_length": spass.max_length[sel]}
                    probs[sel] = stacker_probs(stacker, df.iloc[sel].reset_index(drop=True), student, sub.swap_average)
                    head[sel] = "stacker"
                else:  # the best remaining candidate by out-of-fold log loss: raw student softmax or the prior
                    if no_stacker is None:
                        no_stacker = {"losses": fallback_losses(stack_dir, wd / "student" / "oof.parquet",
                                                                cfg.data.train)}
                    use, why = student_beats_prior(no_stacker["losses"][0], "tta" if tta else "single")
                    no_stacker["tta" if tta else "single"] = why
                    log.warning("no usable stacker: %d student row(s) answered by the %s", len(sel), why)
                    if use:
                        probs[sel] = student_softmax(orig, swap)
                        head[sel] = "student_softmax"
                    else:
                        spass.drop(sel, f"no stacker; {why}")
            except Exception as exc:  # noqa: BLE001
                why = short_reason(exc)
                log.error("stacker on student logits failed (%s); %d rows keep the fallback", why, len(sel))
                spass.drop(sel, f"stacker on student logits failed: {why}")
        bad = np.flatnonzero(~valid_rows(probs))
        if len(bad):  # a stacker that returns garbage: those rows keep the answer written in step 1
            log.error("%d row(s) got invalid probabilities from the student path (e.g. id %s); they keep the fallback",
                      len(bad), df["id"].iloc[bad[0]])
            probs[bad], head[bad] = fallback_probs[bad], fallback_head[bad]
            spass.drop(bad, "invalid probabilities from the student path")
    except Exception as exc:  # noqa: BLE001 - whatever broke, the step-1 answers stand for every row
        why = short_reason(exc)
        log.error("student path failed (%s); every row keeps the fallback", why)
        probs, head = fallback_probs.copy(), fallback_head.copy()
        spass.drop(np.arange(n), f"student path failed: {why}")
        spass.error = spass.error or why
    no_student = np.array([m is None for m in spass.mode], dtype=bool)
    missing_reason = no_student & np.array([r is None for r in spass.reason], dtype=bool)
    spass.reason[missing_reason] = spass.error or "student not run"

    # 4. validate, write, log ----------------------------------------------------------------
    written = write_submission(out_path, _frame(df["id"], probs, ids, prior), ids, sub.clip_eps)
    paths = pd.DataFrame({
        "id": df["id"].astype(str).to_numpy(),
        "student": [m if m is not None else "none" for m in spass.mode],
        "max_length": spass.max_length,
        "head": head,
        "model": answering_models(stacker, head, spass),
        "members": spass.members,
        "reason": [r if r is not None else "" for r in spass.reason],
    })
    stem = out_path.with_name(out_path.stem)
    atomic_write_csv(f"{stem}.paths.csv", paths)
    counts = {f"{h}+{s}": int(c) for (h, s), c in Counter(zip(paths["head"], paths["student"])).items()}
    reasons = {r: int(c) for r, c in Counter(r for r in spass.reason if r is not None).most_common()}
    seconds = deadline.elapsed()
    atomic_write_json(f"{stem}.run.json", {
        "rows": n, "test": str(test_path), "budget_s": budget_s, "elapsed_s": round(seconds, 3),
        "fallback_seconds": round(fallback_seconds, 3), "reserve_s": round(reserve, 3),
        "counts": counts, "fallback_reasons": reasons, "nonfinite_logit_rows": spass.nonfinite_rows,
        "test_repairs": df.attrs.get("repairs", {}), "student_error": spass.error, "chunks": spass.chunks,
        "governor": history, "sample_ids_without_test_row": ids_without_row,
        "test_rows_not_in_sample": order.test_rows_not_in_sample, "sample_submission_error": order.sample_error,
        "stacker_models_not_used": getattr(stacker, "unusable", {}) if stacker is not None else None,
        "no_stacker_choice": None if no_stacker is None else {
            "losses": no_stacker["losses"][0], "source": no_stacker["losses"][1],
            **{k: v for k, v in no_stacker.items() if k != "losses"}},
    })
    write_resolved(cfg, out_path.parent, name=f"{out_path.stem}.config.resolved.yaml")
    log.info("wrote %s (%d rows) in %s; paths: %s", out_path, len(written), format_seconds(seconds),
             ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for r, c in list(reasons.items())[:5]:
        log.warning("%d row(s) without the student: %s", c, r)
    if spass.error:
        log.warning("student: %s", spass.error)
    return SubmissionResult(out=out_path, paths=paths, counts=counts, seconds=seconds)
