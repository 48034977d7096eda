"""Kaggle's metadata rules (arena_kd.kaggle_metadata): every rule of dataset-metadata.json, kernel-metadata.json, the
nbformat 4 notebook and the dataset limits is refused when broken, and what `arena-kd package` writes passes them."""

from __future__ import annotations

import json

import pytest

from arena_kd.common.errors import UserError
from arena_kd.kaggle_metadata import (
    check_dataset_metadata,
    check_kernel_metadata,
    check_notebook,
    code_cells,
    dataset_metadata,
    folder_problems,
    kernel_metadata,
    notebook,
    refuse,
    slugify,
)

DATASETS = ["alice/arena-kd-code", "alice/arena-kd-artifacts", "alice/arena-kd-wheels"]


def test_slugify_as_kernels_push_compares_titles():
    assert slugify("arena-kd-submission") == "arena-kd-submission"
    assert slugify("  Arena KD: Submission!! v2 ") == "arena-kd-submission-v2"


def test_written_dataset_metadata_passes():
    meta = dataset_metadata("alice", "arena-kd-code")
    assert meta == {"title": "arena-kd-code", "id": "alice/arena-kd-code", "licenses": [{"name": "CC0-1.0"}]}
    assert check_dataset_metadata(meta) == []


@pytest.mark.parametrize("change, fragment", [
    ({"title": "short"}, "title 'short'"),  # 5 characters
    ({"title": "t" * 51}, "6-50 characters"),
    ({"id": "alice/codes"}, "5 characters"),  # slug of 5
    ({"id": "alice/" + "c" * 51}, "51 characters"),
    ({"id": "alice/Arena_KD"}, "only lower-case"),
    ({"id": "arena-kd-code"}, "must be 'owner/slug'"),
    ({"id": "alice/x/arena-kd-code"}, "must be 'owner/slug'"),
    ({"id": "al ice/arena-kd-code"}, "owner 'al ice'"),
    ({"id": "/arena-kd-code"}, "owner ''"),
    ({"licenses": []}, "exactly one"),
    ({"licenses": [{"name": "CC0-1.0"}, {"name": "MIT"}]}, "exactly one"),
    ({"licenses": [{}]}, "exactly one"),
])
def test_each_dataset_rule_is_refused(change, fragment):
    meta = {**dataset_metadata("alice", "arena-kd-code"), **change}
    problems = check_dataset_metadata(meta)
    assert any(fragment in p for p in problems), problems


@pytest.fixture
def kernel_dir(tmp_path):
    (tmp_path / "arena-kd-submission.ipynb").write_text(json.dumps(notebook("print('hi')\n")))
    return tmp_path


def test_written_kernel_metadata_passes(kernel_dir):
    meta = kernel_metadata("alice", "arena-kd-submission", "arena-kd-submission.ipynb", DATASETS)
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True and meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["competition_sources"] == ["lmsys-chatbot-arena"] and meta["dataset_sources"] == DATASETS
    assert meta["kernel_type"] == "notebook" and meta["is_private"] is True and meta["language"] == "python"
    assert check_kernel_metadata(meta, kernel_dir, DATASETS) == []


@pytest.mark.parametrize("key, value, fragment", [
    ("enable_internet", None, "enable_internet: '(absent)'"),  # absent = true for the CLI
    ("enable_internet", True, "enable_internet"),
    ("enable_internet", "false", "enable_internet"),  # a string, not the boolean
    ("enable_gpu", False, "enable_gpu"),
    ("is_private", False, "is_private"),
    ("machine_shape", "NvidiaTeslaP100", "machine_shape"),
    ("machine_shape", None, "machine_shape"),
    ("language", "r", "language"),
    ("kernel_type", "script", "kernel_type"),
    ("competition_sources", [], "competition_sources"),
    ("dataset_sources", DATASETS[:2], "must attach"),
    ("dataset_sources", ["alice/short"], "dataset source slug"),
    ("model_sources", None, "model_sources: must be a list"),
    ("kernel_sources", None, "kernel_sources: must be a list"),
    ("title", "Arena KD", "slugify"),
    ("title", "a-kd", "at least 5"),
    ("id", "alice/subm", "5 characters"),  # a kernel slug of 4
    ("id", "arena-kd-submission", "owner/slug"),
    ("code_file", "missing.ipynb", "code_file"),
    ("code_file", "script.py", "code_file"),
])
def test_each_kernel_rule_is_refused(kernel_dir, key, value, fragment):
    meta = kernel_metadata("alice", "arena-kd-submission", "arena-kd-submission.ipynb", DATASETS)
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    (kernel_dir / "script.py").write_text("x = 1\n")
    problems = check_kernel_metadata(meta, kernel_dir, DATASETS)
    assert any(fragment in p for p in problems), problems


def test_notebook_is_nbformat_4_json_and_its_cell_comes_back():
    cell = "import sys\nprint(sys.version)\n"
    nb = json.loads(json.dumps(notebook(cell)))  # valid JSON, as written to disk
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] == 5 and check_notebook(nb) == []
    assert code_cells(nb) == [cell]
    nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {}, "source": "# title", "id": "md"})
    assert check_notebook(nb) == [] and code_cells(nb) == [cell]


@pytest.mark.parametrize("edit, fragment", [
    (lambda nb: nb.update(nbformat=3), "nbformat 3"),
    (lambda nb: nb.update(nbformat_minor="5"), "nbformat"),
    (lambda nb: nb["metadata"].update(kernelspec={"language": "r"}), "kernelspec"),
    (lambda nb: nb.update(cells=[]), "a code cell"),
    (lambda nb: nb["cells"].append({"cell_type": "python", "source": "", "metadata": {}}), "cell 1: cell_type"),
    (lambda nb: nb["cells"][0].update(source=7), "source"),
    (lambda nb: nb["cells"][0].pop("outputs"), "outputs"),
    (lambda nb: nb["cells"][0].pop("execution_count"), "execution_count"),
    (lambda nb: nb["cells"][0].update(id="has space"), "id of 1-64"),
    (lambda nb: nb["cells"][0].update(metadata=None), "metadata must be an object"),
    (lambda nb: nb["cells"][0].update(source=["print(1\n"]), "not valid Python"),
])
def test_each_notebook_rule_is_refused(edit, fragment):
    nb = notebook("print(1)\n")
    edit(nb)
    problems = check_notebook(nb)
    assert any(fragment in p for p in problems), problems


def test_dataset_file_count_and_size_limits(tmp_path):
    for i in range(1000):
        (tmp_path / f"f{i}").write_bytes(b"x")
    assert folder_problems(tmp_path) == []
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one-more").write_bytes(b"x")  # inside a folder counts too: Kaggle unpacks it
    assert folder_problems(tmp_path) == ["1001 files; Kaggle refuses a dataset of more than 1000"]
    problems = folder_problems(tmp_path, max_files=5000, max_gb=1e-6)  # 1001 bytes > 1000
    assert len(problems) == 1 and "GB limit" in problems[0]


def test_refuse_is_one_line_naming_every_problem():
    refuse([], "nothing")
    with pytest.raises(UserError) as e:
        refuse(["a: bad", "b: worse"], "upload")
    assert str(e.value) == "upload: a: bad; b: worse"
