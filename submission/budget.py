"""Time budget of the submission run: parsing, the deadline clock, and the degradation governor.

The student runs over the test rows in chunks. After each chunk the governor measures the
seconds per processed token and picks the best inference mode whose estimated finish (plus a
reserve for the stacker and the write) still fits the deadline. Modes, best first — this is the
documented degradation order:

  tta       student on both orientations (A/B swap TTA) at ``predict.max_length``
  single    student on the original orientation only            (1: drop TTA)
  short     original orientation at ``degraded_max_length``     (2: shorter inputs)
  (none)    the remaining rows get the features-only stacker    (3: rows not reached)

A mode only counts as fitting when its estimate for *all* remaining rows fits, so the choice is
made for the rest of the run; if a later measurement shows more room, the governor goes back up.
The clock is injectable (``clock=``) so tests can force every path deterministically.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

MODES: tuple[str, ...] = ("tta", "single", "short")
"""Student inference modes, best first (the degradation order)."""

PASSES = {"tta": 2, "single": 1, "short": 1}
"""Forward passes per row in each mode."""

class Deadline:
    """Wall-clock budget measured with an injectable monotonic ``clock`` (seconds)."""

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.budget_s = float(budget_s)
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()


@dataclass
class Governor:
    """Chooses the student inference mode chunk by chunk so the run finishes inside the deadline.

    ``tokens[mode]`` holds, per remaining row, the tokens one pass of that mode processes
    (tta/single: length at full max_length; short: at the degraded length). The cost model is
    seconds = sec_per_token x tokens x passes, measured on the chunks done so far (the first,
    warm-up chunk is dropped from the rate once later chunks exist), times ``safety``.
    """

    deadline: Deadline
    reserve_s: float
    safety: float = 1.15
    allow_tta: bool = True
    _measured: list[tuple[float, float]] = field(default_factory=list)  # (pass-tokens, seconds) per chunk
    history: list[dict] = field(default_factory=list)

    def record(self, pass_tokens: float, seconds: float) -> None:
        """Register a finished chunk: tokens processed (summed over passes) and its wall seconds."""
        if pass_tokens > 0:
            self._measured.append((float(pass_tokens), max(float(seconds), 0.0)))

    def sec_per_token(self) -> float | None:
        """Measured seconds per processed token; None before the first chunk."""
        if not self._measured:
            return None
        used = self._measured[1:] if len(self._measured) > 1 else self._measured
        tok = sum(t for t, _ in used)
        sec = sum(s for _, s in used)
        return sec / tok if tok > 0 else None

    def estimate(self, mode: str, remaining_tokens: Sequence[int] | float) -> float | None:
        """Estimated seconds to run ``mode`` over the remaining rows (None = not measured yet)."""
        spt = self.sec_per_token()
        if spt is None:
            return None
        if isinstance(remaining_tokens, (int, float)):
            total = float(remaining_tokens)
        else:
            total = float(sum(remaining_tokens))
        return spt * total * PASSES[mode] * self.safety

    def choose(self, remaining: dict[str, float], next_chunk: dict[str, float] | None = None) -> str | None:
        """Mode for the next chunk; None = stop the student (the rest goes features-only).

        ``remaining[mode]`` = one pass's tokens summed over all remaining rows in that mode;
        ``next_chunk[mode]`` = the same for the next chunk only. The best mode whose estimate for
        all remaining rows fits the time left (minus the reserve) wins. When none fits, the last
        mode ('short') keeps going chunk by chunk while the next chunk still fits — those rows are
        the ones "reached"; the others are left to the features-only stacker. Before any
        measurement the best mode is tried, as long as time beyond the reserve is left.
        """
        left = self.deadline.remaining() - self.reserve_s
        candidates = [m for m in MODES if self.allow_tta or m != "tta"]
        chosen: str | None = None
        if left <= 0:
            chosen = None
        elif self.sec_per_token() is None:
            chosen = candidates[0]
        else:
            for mode in candidates:
                est = self.estimate(mode, remaining[mode])
                if est is not None and est <= left:
                    chosen = mode
                    break
            if chosen is None and next_chunk is not None:
                last = candidates[-1]
                est = self.estimate(last, next_chunk[last])
                if est is not None and est <= left:
                    chosen = last
        self.history.append({"elapsed_s": round(self.deadline.elapsed(), 3), "left_s": round(left, 3), "mode": chosen})
        return chosen
