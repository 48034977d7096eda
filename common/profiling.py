"""Wall time and peak memory of a block of work (per pipeline stage).

Peak resident memory is sampled from /proc/self/statm by a background thread (the process-wide
``ru_maxrss`` only ever grows, so it cannot give a per-stage peak). GPU peak memory comes from
torch.cuda when a GPU is present.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the high-water mark
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class StageRecord:
    stage: str
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {"stage": self.stage, "seconds": round(self.seconds, 2), "peak_rss_mib": round(self.peak_rss_mib, 1)}
        if self.peak_gpu_mib is not None:
            d["peak_gpu_mib"] = round(self.peak_gpu_mib, 1)
        d.update(self.extra)
        return d


@contextlib.contextmanager
def measure(stage: str, interval_s: float = 0.2) -> Iterator[StageRecord]:
    """Time a block and sample its peak RSS; yields the record, filled in on exit (also on error)."""
    rec = StageRecord(stage)
    peak = [current_rss_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], current_rss_bytes())

    cuda = None
    try:
        import torch

        if torch.cuda.is_available():
            cuda = torch.cuda
            cuda.reset_peak_memory_stats()
    except ImportError:
        pass
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield rec
    finally:
        rec.seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        peak[0] = max(peak[0], current_rss_bytes())
        rec.peak_rss_mib = peak[0] / 2**20
        if cuda is not None:
            rec.peak_gpu_mib = cuda.max_memory_allocated() / 2**20
