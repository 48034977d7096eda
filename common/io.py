"""Atomic outputs, keyed Parquet tables with metadata sidecars, hashing and path resolution.

Every artifact is written to a temporary file in the same folder and renamed, so an
interrupted stage never leaves a half-written file and rerunning it resumes cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from arena_kd.common.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(path: str | Path, df: pd.DataFrame, **kw: Any) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kw)
    return Path(path)


def atomic_write_parquet(path: str | Path, df: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def sidecar_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".meta.json")


def write_keyed_table(path: str | Path, df: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """Parquet keyed by ``id`` plus a JSON metadata sidecar (model, revision, fold, hashes, T...)."""
    if "id" not in df.columns:
        raise ValueError("keyed tables need an 'id' column")
    if df["id"].duplicated().any():
        raise ValueError(f"{path}: duplicate ids in keyed table")
    out = df.copy()
    out["id"] = out["id"].astype(str)
    atomic_write_json(sidecar_path(path), meta)
    return atomic_write_parquet(path, out)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The metadata sidecar of a keyed table (``{}`` when it has none), without reading the table."""
    sc = sidecar_path(path)
    return json.loads(sc.read_text()) if sc.is_file() else {}


def read_keyed_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    df = pd.read_parquet(p)
    df["id"] = df["id"].astype(str)
    return df, read_sidecar(p)


def jsonable(obj: Any) -> Any:
    """Metrics/metadata → plain JSON types (numpy and torch scalars unwrapped, small tensors as lists, rest as str)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    if hasattr(obj, "numel") and hasattr(obj, "tolist"):  # torch tensor
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        return obj.item()
    return str(obj)


def json_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object (keys sorted; non-JSON values as str): config and id-list identities for resume."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def frame_hash(df: pd.DataFrame, columns: list[str] | None = None, n: int = 16) -> str:
    """Order-independent content hash of selected columns (rows hashed, sorted, hashed)."""
    cols = columns or list(df.columns)
    rows = pd.util.hash_pandas_object(df[cols].astype(str), index=False).to_numpy().copy()  # writable (pandas 3)
    rows.sort()
    return hashlib.sha256(rows.tobytes()).hexdigest()[:n]


def resolve_path(spec: str | None) -> str | None:
    """Resolve 'pkg://<package>/<sub/path>' to a folder inside an installed package; other strings unchanged."""
    if spec is None or not spec.startswith("pkg://"):
        return spec
    rest = spec[len("pkg://"):]
    pkg, _, sub = rest.partition("/")
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        raise UserError(f"{spec}: package '{pkg}' is not installed (make setup-demo installs the demo models)")
    base = Path(list(found.submodule_search_locations)[0])
    return str(base / sub) if sub else str(base)
