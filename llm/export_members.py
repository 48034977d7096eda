"""Which export folders a student export is made of, read without torch (the planner and the submission's fallback
path stay light): one model's folder, or the members a fold ensemble's ``ensemble.json`` names
(``student.final: fold_ensemble``; written by ``llm.export.save_ensemble_manifest``). Also the one reader of the
stages' small JSON records (final.json, export.json, ensemble.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arena_kd.common.errors import UserError

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_REDUCTION = "mean over the members of each one's log-softmax, per orientation (metrics.mean_log_softmax)"


def export_members(export_dir: str | Path) -> list[Path]:
    """The export folders a student export is made of: ``[export_dir]`` for a single model, else the members its
    ensemble.json names, in order (UserError when it is unreadable, names none, or names a missing folder)."""
    export_dir = Path(export_dir)
    manifest = export_dir / ENSEMBLE_FILE
    if not manifest.is_file():
        return [export_dir]
    done = read_json_record(manifest, "rerun `arena-kd distill --force` to export again")
    names = done.get("members")
    if not isinstance(names, list) or not names:
        raise UserError(f"{manifest}: names no members; rerun `arena-kd distill --force` to export again")
    members = [export_dir / str(m) for m in names]
    for m in members:
        if not (m / "export.json").is_file():
            raise UserError(f"{m}: member of {manifest} has no export.json; rerun `arena-kd distill --force`")
    return members


def read_json_record(path: str | Path, remedy: str) -> dict[str, Any]:
    """A stage's JSON record (final.json, export.json) as a dict; a truncated, non-UTF-8 or non-object file raises
    one UserError line naming the file, why, and ``remedy`` (e.g. "rerun with --force to redo the final stage")."""
    path = Path(path)
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(done, dict):
            raise ValueError(f"holds a JSON {type(done).__name__}, not an object")
        return done
    except json.JSONDecodeError as exc:
        why = f"invalid JSON: {exc.msg} at line {exc.lineno}"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    raise UserError(f"{path}: unreadable {path.name} ({why}); {remedy}")
