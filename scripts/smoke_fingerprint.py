"""Fingerprint of everything `arena-kd all` writes on the smoke config: one hash per output, compared before and after
a refactor (issue 15: "behaviour unchanged").

    python scripts/smoke_fingerprint.py run  OUT_DIR  > before.json   # runs the pipeline into OUT_DIR, prints hashes
    python scripts/smoke_fingerprint.py diff before.json after.json   # exit 1 when any output differs

What is hashed: every Parquet table (its values, column by column, exact), every CSV, every sidecar/JSON with the keys
that carry wall-clock times, absolute paths, timestamps or library versions dropped (they differ run to run by design),
and every safetensors file. Logs, plots and Markdown (which print times) are listed but not hashed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# JSON keys that are measurements of this run, not results (times, places, versions, memory): a key is dropped when
# one of its "_"-separated words is listed (so "log_loss" or "per_source" stay), or when it ends in "_s" (seconds).
VOLATILE = {"second", "seconds", "time", "runtime", "wall", "elapsed", "duration", "started", "finished", "date",
            "path", "dir", "workdir", "host", "version", "versions", "pid", "throughput", "peak", "rss", "memory",
            "profile", "cwd", "left"}


def _volatile(key: str) -> bool:
    return bool(set(key.lower().split("_")) & VOLATILE) or key.endswith("_s")


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in sorted(obj.items())
                if not _volatile(k)}
    if isinstance(obj, list):
        items = [_clean(v) for v in obj]
        # peft writes target_modules from a set: its order changes run to run
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    if isinstance(obj, str) and ("/" in obj and (obj.startswith("/") or "runs/" in obj)):
        return "<path>"
    return obj


def fingerprint(work: Path) -> dict[str, str]:
    import pandas as pd

    from arena_kd.common.io import file_hash, json_hash

    out: dict[str, str] = {}
    for f in sorted(p for p in work.rglob("*") if p.is_file()):
        rel = str(f.relative_to(work))
        if f.suffix == ".parquet":  # values in row order (common.io.frame_hash ignores the order)
            h = hashlib.sha256()
            df = pd.read_parquet(f)
            for c in df.columns:
                h.update(c.encode())
                h.update(pd.util.hash_pandas_object(df[c].astype(str) if df[c].dtype == object else df[c],
                                                    index=False).values.tobytes())
            out[rel] = h.hexdigest()[:16]
        elif f.suffix == ".json":
            try:
                out[rel] = json_hash(_clean(json.loads(f.read_text())))
            except ValueError:
                out[rel] = file_hash(f)
        elif f.suffix in (".csv", ".safetensors", ".jsonl") and "metrics" not in f.name:
            out[rel] = file_hash(f)
        else:
            out[rel] = "(listed)"
    return out


def main() -> int:
    if sys.argv[1] == "run":
        work = Path(sys.argv[2]).resolve()
        cmd = [sys.executable, "-m", "arena_kd", "all", "--config", str(ROOT / "configs" / "smoke.yaml"),
               "--set", f"workdir={work}"]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=sys.stderr)
        print(json.dumps(fingerprint(work), indent=1, sort_keys=True))
        return 0
    a, b = (json.loads(Path(p).read_text()) for p in sys.argv[2:4])
    bad = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    for k in bad:
        print(f"DIFFERS {k}: {a.get(k)} -> {b.get(k)}")
    listed = sum(v == "(listed)" for v in a.values())
    print(f"{len(set(a) | set(b)) - len(bad)} outputs identical ({listed} only listed), {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
