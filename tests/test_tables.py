"""arena_kd.common.tables: the rows and Markdown tables both reports print (stacking/report.md, report.md)."""

from __future__ import annotations

import numpy as np

from arena_kd.common.tables import format_table, interval_row


def test_interval_row_has_no_interval_for_one_prompt_group():
    y = np.array([0, 1, 2, 0])
    p = np.full((4, 3), 1 / 3)
    one = interval_row("u", y, p, np.zeros(4), seed=0)
    assert one["lo"] is None and one["hi"] is None and one["rows"] == 4 and abs(one["log_loss"] - np.log(3)) < 1e-12
    many = interval_row("u", y, p, np.arange(4), seed=0, note="n")
    assert many["lo"] is not None and many["note"] == "n"


def test_format_table_with_counts_sources_and_missing_intervals():
    rows = [{"stage": "a", "rows": 4, "log_loss": 1.0, "lo": None, "hi": None, "accuracy": 0.5, "note": "x",
             "source": "s1"},
            {"stage": "b", "rows": 4, "log_loss": 0.5, "lo": float("nan"), "hi": float("nan"), "accuracy": 1.0,
             "source": "s2"}]
    lines = format_table(rows, counts=True).splitlines()
    assert lines[0] == "| source | stage | rows | log loss | 95% interval | accuracy | note |"
    assert lines[1] == "|---|---|---:|---:|---|---:|---|"
    assert lines[2] == "| s1 | a | 4 | 1.0000 | — | 0.500 | x |"
    assert lines[3] == "| s2 | b | 4 | 0.5000 | — | 1.000 |  |"
    plain = format_table([{**rows[0], "lo": 0.9, "hi": 1.1}]).splitlines()
    assert plain[0].startswith("| source | stage | log loss |") and "[0.9000, 1.1000]" in plain[2]
