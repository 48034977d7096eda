"""What Kaggle's CLI accepts, written and checked in one place: ``dataset-metadata.json``, ``kernel-metadata.json``,
the notebook (nbformat 4), and a dataset folder's file count and size.

Sources (the project's public-facts notes, "Kaggle's CLI"): Kaggle/kaggle-api ``docs/datasets_metadata.md``,
``docs/kernels_metadata.md`` and ``src/kaggle/api/kaggle_api_extended.py`` (``dataset_create_new``: exactly one
licence, slug and title 6-50 characters; ``kernels_push``: title at least 5 characters and slugifying to the id, slug
at least 5, ``language`` / ``kernel_type`` from a fixed list, ``enable_internet`` **true when absent**); a
third-party report of "file count exceeds the maximum of 1000" for a dataset. What is marked *assumption* below is
not in those sources. The checkers return every problem found (an empty list = accepted), so the rehearsal and the
tests can name them all; :func:`refuse` turns them into the one-line error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from arena_kd.common.errors import UserError

COMPETITION = "lmsys-chatbot-arena"
MACHINE_SHAPE = "NvidiaTeslaT4"  # 2x T4 (kaggle-api PR 1198); enable_gpu alone gave a P100 (issue 821)
LICENSE = "CC0-1.0"  # the docs' example licence; one entry, as dataset_create_new demands
DATASET_META = "dataset-metadata.json"
KERNEL_META = "kernel-metadata.json"
MAX_FILES = 1000  # reported refusal (third-party): "file count exceeds the maximum of 1000"
# assumption: Kaggle's private-dataset quota is "over 100 GB" (Packt, "Developing Kaggle Notebooks", ch. 1); no
# per-dataset figure is published in the CLI sources, so the quota is the limit checked (a flag of `arena-kd package`)
MAX_DATASET_GB = 100.0
# assumption: Kaggle usernames are letters, digits, '-' and '_' (the CLI itself only needs a non-empty owner)
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}$")
# assumption: the form python-slugify gives (what `kernels push` compares the title with): lower-case words and '-'
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # nbformat 4.5 cell ids


def slugify(title: str) -> str:
    """A title's URL slug as `kernels push` compares it with the id (python-slugify on ASCII text): lower case,
    every run of other characters one '-', none at either end."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def owner_problems(owner: str) -> list[str]:
    if not _OWNER.match(owner or ""):
        return [f"owner {owner!r}: a Kaggle username is 1-50 letters, digits, '-' or '_' (no '/', no spaces)"]
    return []


def slug_problems(slug: str, kind: str, low: int = 6, high: int = 50) -> list[str]:
    """A dataset slug is 6-50 characters (dataset_create_new); a kernel slug at least 5 (validate_kernel_string)."""
    problems = []
    if not low <= len(slug) <= high:
        problems.append(f"{kind} slug {slug!r}: {len(slug)} characters, Kaggle needs {low}-{high}")
    if not _SLUG.match(slug):
        problems.append(f"{kind} slug {slug!r}: only lower-case letters, digits and single '-' between them")
    return problems


def _ref_problems(ref: Any, kind: str, low: int) -> list[str]:
    parts = ref.split("/") if isinstance(ref, str) else []
    if len(parts) != 2:
        return [f"{kind} id {ref!r}: must be 'owner/slug'"]
    return owner_problems(parts[0]) + slug_problems(parts[1], kind, low=low)


def dataset_metadata(owner: str, slug: str) -> dict[str, Any]:
    """``dataset-metadata.json`` for ``owner/slug``; the title is the slug itself (so 6-50 characters too)."""
    return {"title": slug, "id": f"{owner}/{slug}", "licenses": [{"name": LICENSE}]}


def check_dataset_metadata(meta: Any) -> list[str]:
    if not isinstance(meta, dict):
        return ["dataset metadata is not a JSON object"]
    problems = _ref_problems(meta.get("id"), "dataset", low=6)
    title = meta.get("title")
    if not isinstance(title, str) or not 6 <= len(title) <= 50:
        problems.append(f"dataset title {title!r}: Kaggle needs 6-50 characters")
    licenses = meta.get("licenses")
    if not (isinstance(licenses, list) and len(licenses) == 1 and isinstance(licenses[0], dict)
            and licenses[0].get("name")):
        problems.append(f"licenses {licenses!r}: Kaggle needs exactly one entry with a name")
    return problems


def kernel_metadata(owner: str, slug: str, code_file: str, datasets: list[str],
                    models: list[str] = ()) -> dict[str, Any]:
    """``kernel-metadata.json`` of the submission notebook: private, GPU on as 2x T4, internet **explicitly off**
    (the CLI turns it on when the key is absent, and a code competition refuses such a notebook), the competition
    and ``datasets`` (``owner/slug`` each) attached."""
    return {"id": f"{owner}/{slug}", "title": slug, "code_file": code_file, "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": True, "enable_tpu": False,
            "enable_internet": False, "machine_shape": MACHINE_SHAPE, "dataset_sources": list(datasets),
            "competition_sources": [COMPETITION], "model_sources": list(models), "kernel_sources": []}


def check_kernel_metadata(meta: Any, folder: Path, datasets: list[str] | None = None) -> list[str]:
    """Every rule of the submission notebook's metadata; ``datasets``: the sources it must attach (any order)."""
    if not isinstance(meta, dict):
        return ["kernel metadata is not a JSON object"]
    problems = _ref_problems(meta.get("id"), "kernel", low=5)
    slug = str(meta.get("id", "")).partition("/")[2]
    title = meta.get("title")
    if not isinstance(title, str) or len(title) < 5 or slugify(title) != slug:
        problems.append(f"kernel title {title!r}: needs at least 5 characters and to slugify to {slug!r}")
    code = meta.get("code_file")
    if not isinstance(code, str) or not code.endswith(".ipynb") or not (folder / code).is_file():
        problems.append(f"code_file {code!r}: not a notebook (.ipynb) in {folder}")
    want = {"language": "python", "kernel_type": "notebook", "is_private": True, "enable_gpu": True,
            "enable_internet": False, "machine_shape": MACHINE_SHAPE, "competition_sources": [COMPETITION]}
    for key, value in want.items():
        if key not in meta or meta[key] != value or type(meta[key]) is not type(value):
            problems.append(f"{key}: {meta.get(key, '(absent)')!r}, must be {value!r}")
    for key in ("dataset_sources", "model_sources", "kernel_sources"):
        if not isinstance(meta.get(key), list):
            problems.append(f"{key}: must be a list")
    for ref in meta.get("dataset_sources") or []:
        problems += _ref_problems(ref, "dataset source", low=6)
    if datasets is not None and sorted(meta.get("dataset_sources") or []) != sorted(datasets):
        problems.append(f"dataset_sources {meta.get('dataset_sources')!r}: must attach {sorted(datasets)!r}")
    return problems


def notebook(cell_source: str) -> dict[str, Any]:
    """An nbformat 4.5 notebook of one code cell (written by hand: the ``nbformat`` package is not a dependency)."""
    cell = {"cell_type": "code", "execution_count": None, "id": "arena-kd-predict", "metadata": {}, "outputs": [],
            "source": cell_source.splitlines(keepends=True)}
    meta = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}
    return {"cells": [cell], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


def check_notebook(nb: Any) -> list[str]:
    """The nbformat 4 structure Jupyter and `kernels push` read, and that every code cell is valid Python."""
    if not isinstance(nb, dict):
        return ["notebook is not a JSON object"]
    problems = []
    minor = nb.get("nbformat_minor")
    if nb.get("nbformat") != 4 or not isinstance(minor, int):
        problems.append(f"nbformat {nb.get('nbformat')!r}.{nb.get('nbformat_minor')!r}: must be 4.<int>")
    if not isinstance(nb.get("metadata"), dict) or nb["metadata"].get("kernelspec", {}).get("language") != "python":
        problems.append("metadata.kernelspec.language must be 'python'")
    cells = nb.get("cells")
    if not isinstance(cells, list) or not any(isinstance(c, dict) and c.get("cell_type") == "code" for c in cells):
        return problems + ["cells: must be a list with a code cell"]
    for i, cell in enumerate(cells):
        where = f"cell {i}"
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            problems.append(f"{where}: cell_type must be code, markdown or raw")
            continue
        src = cell.get("source")
        if not (isinstance(src, str) or isinstance(src, list) and all(isinstance(s, str) for s in src)):
            problems.append(f"{where}: source must be a string or a list of strings")
            continue
        if not isinstance(cell.get("metadata"), dict):
            problems.append(f"{where}: metadata must be an object")
        if isinstance(minor, int) and minor >= 5 and not _CELL_ID.match(str(cell.get("id", ""))):
            problems.append(f"{where}: nbformat 4.5 needs an id of 1-64 letters, digits, '-' or '_'")
        if cell["cell_type"] == "code":
            if not isinstance(cell.get("outputs"), list) or "execution_count" not in cell:
                problems.append(f"{where}: a code cell needs outputs (list) and execution_count")
            try:
                compile("".join(src), f"<{where}>", "exec")
            except SyntaxError as exc:
                problems.append(f"{where}: not valid Python ({exc.msg}, line {exc.lineno})")
    return problems


def code_cells(nb: dict[str, Any]) -> list[str]:
    """The source of every code cell, in order, as Jupyter runs them."""
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c.get("cell_type") == "code"]


def folder_problems(folder: Path, max_files: int = MAX_FILES, max_gb: float = MAX_DATASET_GB) -> list[str]:
    """A dataset folder Kaggle would refuse: more than ``max_files`` files (counted inside folders too: they are
    unpacked on Kaggle) or more than ``max_gb`` gigabytes."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    problems = []
    if len(files) > max_files:
        problems.append(f"{len(files)} files; Kaggle refuses a dataset of more than {max_files}")
    if size > max_gb * 1e9:
        problems.append(f"{size / 1e9:.3g} GB; above the {max_gb:g} GB limit checked (--max-dataset-gb)")
    return problems


def refuse(problems: list[str], what: str) -> None:
    """Raise the one-line error for ``problems`` (none: return)."""
    if problems:
        raise UserError(f"{what}: {'; '.join(problems)}")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
