"""arena-kd: knowledge distillation + stacking for pairwise chatbot preference prediction.

One import name, ``arena_kd``, for the whole distribution. The layers live in top-level folders of the repository
(``common/``, ``data/``, ``llm/``, ``kfold/``, ``blend/``, ``planner/``, ``teachers/``, ``student/``, ``stacking/``,
``submission/``) and are imported as ``arena_kd.common``, ``arena_kd.data``, ...: an installed wheel maps them there
(``[tool.setuptools] package-dir`` in pyproject.toml), and a source checkout (tests, the Kaggle code dataset put on
``sys.path``) finds them because this package's search path also lists the repository root. No generic top-level
name such as ``data`` is ever installed. See docs/ARCHITECTURE.md.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_here = _Path(__file__).resolve().parent
# Source checkout: arena_kd/ sits beside the layer folders, not above them (an installed wheel has arena_kd/data/).
if not (_here / "data").is_dir() and (_here.parent / "data" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - the package's own search path
