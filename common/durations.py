"""Durations as people write them: parse a time budget ('8h30m', '45m', '30600') and print seconds ('2h05m').

Shared by the submission's time governor and the planner's verdicts.
"""

from __future__ import annotations

import re

from arena_kd.common.errors import UserError

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def parse_time_budget(text: str | int | float, source: str = "--time-budget") -> float:
    """Seconds in a budget written as '30600', '8h30m', '45m', '90s', '1h5m10s' or '2.5h'.

    Raises :class:`UserError` (one line naming ``source``) for anything else or a budget <= 0.
    """
    if isinstance(text, bool):
        raise UserError(f"{source}: '{text}' is not a time budget (use e.g. 30600, 8h30m, 45m, 90s)")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            seconds = float(s)
        else:
            parts = _PART.findall(s)
            units = [u for _, u in parts]
            if (not s or "".join(n + u for n, u in parts) != s or len(set(units)) != len(units)
                    or units != sorted(units, key="dhms".index)):
                raise UserError(f"{source}: '{text}' is not a time budget (use e.g. 30600, 8h30m, 45m, 90s)")
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise UserError(f"{source}: '{text}' must be a positive duration")
    return seconds


def format_seconds(seconds: float) -> str:
    """'2h05m', '4m10s', '12.3s' — for logs and tables."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
