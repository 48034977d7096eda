"""Import layering (docs/ARCHITECTURE.md "Layers"): a module imports only its own package or a lower layer; stages
never import each other; no two modules import each other, directly or around a circle. Lazy imports (inside
functions) count. The checker is tested on a small made-up tree first, so a broken checker cannot pass silently."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "common": 0,  # keys, config, errors, io, metrics, profiling: imports no other layer
    "data": 1,
    "llm": 2,
    "kfold": 3, "blend": 3, "planner": 3,  # shared by the stages; independent of each other
    "teachers": 4, "student": 4, "stacking": 4, "submission": 4,  # stages: meet only through files and layers 0-3
    "arena_kd": 5,  # cli, pipeline, report, evaluate, rehearsal: the top, may import every layer
}
"""Package (= top-level folder, imported as arena_kd.<folder>) -> layer. Same layer, other package: forbidden."""


def package_of(module: str) -> str | None:
    """'arena_kd.data.readers' -> 'data'; 'arena_kd.cli' -> 'arena_kd'; a third-party module -> None."""
    parts = module.split(".")
    if parts[0] != "arena_kd":
        return None
    if len(parts) > 1 and parts[1] in LAYERS and parts[1] != "arena_kd":
        return parts[1]
    return "arena_kd"


def module_imports(root: Path) -> dict[str, set[str]]:
    """{module: arena_kd modules it imports} for every .py file of the layer folders under ``root``."""
    graph: dict[str, set[str]] = {}
    for folder in LAYERS:
        for f in sorted((root / folder).glob("*.py")):
            pkg = "arena_kd" if folder == "arena_kd" else f"arena_kd.{folder}"
            mod = pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"
            found: set[str] = set()
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level > 0:  # relative: would hide from the check
                    raise AssertionError(f"{f}:{node.lineno}: relative import; write arena_kd.<layer>.<module>")
                elif isinstance(node, ast.ImportFrom) and node.module:
                    found.add(node.module)
                    found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
            graph[mod] = {m for m in found if m.startswith("arena_kd")}
    known = set(graph)
    return {m: {i for i in imps if i in known and i != m} for m, imps in graph.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, imps in sorted(graph.items()):
        src = package_of(mod)
        for imp in sorted(imps):
            dst = package_of(imp)
            if dst == src or src == "arena_kd" or dst == "arena_kd" and imp == "arena_kd":
                continue
            if LAYERS[dst] > LAYERS[src]:
                up = f"layer {LAYERS[src]} ({src}) reaches up to layer {LAYERS[dst]} ({dst})"
                bad.append(f"{mod} imports {imp}: {up}")
            elif LAYERS[dst] == LAYERS[src]:
                same = f"{src} and {dst} are both layer {LAYERS[src]}; they meet through files"
                bad.append(f"{mod} imports {imp}: {same}")
    return bad


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return tmp


def test_checker_finds_upward_cross_stage_and_circular_imports(tmp_path):
    root = _tree(tmp_path, {
        "common/io.py": "def f():\n    from arena_kd.data.readers import read_pairs\n",  # lazy, upward
        "data/readers.py": "from arena_kd.data import validate\n",
        "data/validate.py": "from arena_kd.data.readers import x\n",  # circle with readers
        "student/run.py": "from arena_kd.teachers.run import run\nfrom arena_kd.kfold.runner import run_folds\n",
        "teachers/run.py": "import arena_kd.common.io\n",
        "kfold/runner.py": "from arena_kd.blend import stacker\n",  # same shared layer, other package
        "blend/stacker.py": "",
        "arena_kd/cli.py": "from arena_kd.student.run import main\n",  # the top may import anything
    })
    graph = module_imports(root)
    bad = layer_violations(graph)
    assert any(b.startswith("arena_kd.common.io imports arena_kd.data.readers: layer 0") for b in bad)
    assert any(b.startswith("arena_kd.student.run imports arena_kd.teachers.run") for b in bad)
    assert any(b.startswith("arena_kd.kfold.runner imports arena_kd.blend.stacker") for b in bad)
    assert len(bad) == 3  # student -> kfold, teachers -> common, cli -> student are allowed
    assert import_circles(graph) == [["arena_kd.data.readers", "arena_kd.data.validate"]]
    _tree(tmp_path, {"data/render.py": "from ..student import run\n"})
    with pytest.raises(AssertionError, match="relative import"):
        module_imports(root)


def test_no_module_imports_a_higher_layer_or_another_stage():
    graph = module_imports(ROOT)
    assert len(graph) > 60  # the real tree was read
    assert layer_violations(graph) == []


def test_no_import_circle():
    assert import_circles(module_imports(ROOT)) == []


def test_every_layer_folder_is_a_package_mapped_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    for folder in LAYERS:
        assert (ROOT / folder / "__init__.py").is_file(), folder
        if folder != "arena_kd":
            assert f'"arena_kd.{folder}" = "{folder}"' in text, folder
