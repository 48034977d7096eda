"""Issue 22's hostile-input probe, test-file side: any file with an ``id`` column is scored, whatever its encoding,
compression or name, and a broken sample submission beside it costs nothing.

Each case ran through ``run_submission`` with the fake student and stacker of tests/test_submission.py (the
``artifacts`` fixture); before the fix each of them ended in a one-line exit 2 and no file (or, through
kaggle/predict.py, the class prior only).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from test_submission import N_ROWS, _assert_valid, artifacts  # noqa: F401 - artifacts: the fake-backed fixture
from test_submission_real import export  # noqa: F401 - module fixture: a real tiny exported student

from arena_kd.data.readers import read_pairs
from arena_kd.data.text import decode_bytes, read_id_column
from arena_kd.submission import run as run_mod

ROOT = Path(__file__).resolve().parents[1]


def _run(artifacts, test: Path):  # noqa: F811
    res = run_mod.run_submission(artifacts["cfg"], test=str(test), out=str(artifacts["out"]), progress=False)
    summary = json.loads(artifacts["out"].with_name("submission.run.json").read_text())
    return res, summary


def _csv_bytes(artifacts, encoding: str = "utf-8") -> bytes:  # noqa: F811
    return artifacts["src"].to_csv(index=False).encode(encoding)


# --------------------------------------------------------------------------- 1. UTF-16 / UTF-32


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_wide_unicode_test_file_is_decoded_and_scored(artifacts, encoding):  # noqa: F811
    """Was exit 2: "has 28 fields, header has 4 (unbalanced quotes?)". Python's utf-16/utf-32 write a BOM; the BE
    variants are written with an explicit BOM as Windows tools do."""
    raw = _csv_bytes(artifacts, encoding)
    if encoding.endswith("-be"):
        raw = ("\ufeff".encode(encoding)) + raw
    test = artifacts["test"].with_name("test_wide.csv")
    test.write_bytes(raw)
    res, summary = _run(artifacts, test)
    _assert_valid(artifacts["out"], artifacts["src"]["id"].tolist()[::-1])
    assert res.counts == {"stacker+tta": N_ROWS} and summary["test_repairs"] == {}
    # the strict reader decodes it too (same text as the UTF-8 file: not repaired, read)
    assert read_pairs(test)["prompt"].tolist() == read_pairs(artifacts["test"])["prompt"].tolist()


def test_decode_bytes_detects_byte_order_marks():
    for enc, name in (("utf-16-le", "utf-16-le"), ("utf-16-be", "utf-16-be"), ("utf-32-le", "utf-32-le"),
                      ("utf-32-be", "utf-32-be")):
        assert decode_bytes("\ufeffid,é😀\n".encode(enc)) == ("id,é😀\n", name)
    assert decode_bytes("\ufeffid".encode("utf-16-le") + b"\x00")[0].startswith("id")  # odd byte count: no raise


# --------------------------------------------------------------------------- 2. compressed test files


COMPRESSORS = {
    "test.csv.gz": gzip.compress,
    "test.csv.bz2": bz2.compress,
    "test.csv.xz": lzma.compress,
}


@pytest.mark.parametrize("name", [*COMPRESSORS, "test.zip"])
def test_compressed_test_file_is_read_and_scored(artifacts, name):  # noqa: F811
    """Was exit 2: "unknown file type '.gz'"."""
    raw = _csv_bytes(artifacts)
    test = artifacts["test"].with_name(name)
    if name == "test.zip":
        with zipfile.ZipFile(test, "w") as zf:
            zf.writestr("test.csv", raw)
    else:
        test.write_bytes(COMPRESSORS[name](raw))
    res, _ = _run(artifacts, test)
    _assert_valid(artifacts["out"], artifacts["src"]["id"].tolist()[::-1])
    assert res.counts == {"stacker+tta": N_ROWS}
    assert read_id_column(test) == artifacts["src"]["id"].astype(str).tolist()


def test_zip_with_several_files_is_one_line(tmp_path):
    from arena_kd.common.errors import UserError
    from arena_kd.data.containers import read_raw

    p = tmp_path / "two.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.csv", "id\n1\n")
        zf.writestr("b.csv", "id\n2\n")
    with pytest.raises(UserError, match=r"two.zip: not a readable zip file \(zip archive holds 2 files"):
        read_raw(p)


# --------------------------------------------------------------------------- 3. the content decides, not the name


@pytest.mark.parametrize("name,kind", [("test.txt", "csv"), ("test", "csv"), ("test.csv", "parquet"),
                                       ("test.dat", "jsonl")])
def test_any_file_with_an_id_column_is_scored_whatever_its_name(artifacts, name, kind):  # noqa: F811
    """Was exit 2 ("unknown file type '.txt'"); kaggle/predict.py then kept the class prior."""
    src = artifacts["src"]
    test = artifacts["test"].with_name("other") / name
    test.parent.mkdir()
    pd.DataFrame({"id": src["id"][::-1], "winner_model_a": 0.3, "winner_model_b": 0.3, "winner_tie": 0.4}).to_csv(
        test.with_name("sample_submission.csv"), index=False)
    if kind == "csv":
        src.to_csv(test, index=False)
    elif kind == "parquet":
        src.to_parquet(test, index=False)
    else:
        src.to_json(test, orient="records", lines=True)
    res, _ = _run(artifacts, test)
    _assert_valid(artifacts["out"], src["id"].tolist()[::-1])
    assert res.counts == {"stacker+tta": N_ROWS}


def test_kaggle_entry_point_scores_a_txt_test_file(tmp_path):
    """Through kaggle/predict.py, a CSV named test.txt reaches the stacker path (here: the features-only stacker is
    absent, so the run's own answer — not the step-1 fallback — is checked via paths.csv and no 'error:' line)."""
    comp = tmp_path / "input"
    comp.mkdir()
    src = pd.read_csv(ROOT / "data/sample/test.csv").head(6)
    src.to_csv(comp / "test.txt", index=False)
    art = tmp_path / "artifacts"
    art.mkdir()
    (art / "config.yaml").write_text((ROOT / "configs/smoke.yaml").read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "kaggle/predict.py"), "--artifacts", str(art),
                           "--test", str(comp / "test.txt"), "--out", str(tmp_path / "submission.csv"),
                           "--time-budget", "5m", "--wheels", str(tmp_path / "no-wheels")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr[-2000:]
    paths = pd.read_csv(tmp_path / "submission.paths.csv", dtype=str)
    assert paths["id"].tolist() == src["id"].astype(str).tolist()  # the run itself answered, not only step 1


# --------------------------------------------------------------------------- 4. a broken sample submission


@pytest.mark.parametrize("broken", ["no id column", "binary garbage", "header only", "several files zipped"])
def test_broken_sample_submission_beside_a_good_test_file(artifacts, broken):  # noqa: F811
    """Was exit 2 with no file. The test file's ids answer; why the sample was not used is logged and recorded."""
    ss = artifacts["test"].with_name("sample_submission.csv")
    if broken == "no id column":
        ss.write_text("row,winner_model_a\n1,0.3\n")
    elif broken == "binary garbage":
        ss.write_bytes(bytes(range(256)) * 8)
    elif broken == "header only":
        ss.write_text("id,winner_model_a,winner_model_b,winner_tie\n")
    else:
        with zipfile.ZipFile(ss, "w") as zf:
            zf.writestr("a.csv", "id\n1\n")
            zf.writestr("b.csv", "id\n2\n")
    res, summary = _run(artifacts, artifacts["test"])
    _assert_valid(artifacts["out"], artifacts["src"]["id"].astype(str).tolist())  # the test file's order
    assert res.counts == {"stacker+tta": N_ROWS}
    assert summary["sample_submission_error"]


def test_configured_sample_submission_missing_is_not_fatal(artifacts):  # noqa: F811
    artifacts["test"].with_name("sample_submission.csv").unlink()
    res = run_mod.run_submission(artifacts["cfg"], out=str(artifacts["out"]), progress=False)
    _assert_valid(artifacts["out"], artifacts["src"]["id"].astype(str).tolist())
    assert res.counts == {"stacker+tta": N_ROWS}


# --------------------------------------------------------------------------- 5. not verified → not used


@pytest.fixture()
def export_copy(export, tmp_path):  # noqa: F811
    """A copy of tests/test_submission_real.py's real export (4 reference rows), free to damage."""
    import shutil

    cfg, export_dir, _ = export
    dst = tmp_path / "export"
    shutil.copytree(export_dir, dst)
    return cfg, dst


def _rewrite_export_json(export_dir: Path, **changes) -> None:
    p = export_dir / "export.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))


@pytest.mark.parametrize("damage", ["reference deleted", "reference cut to 2 of 4 rows"])
def test_student_without_its_full_reference_is_not_used(export_copy, damage, caplog):
    """Was: reference_logits.parquet deleted → the check silently turned off ("used unchecked") while export.json
    still recorded its rows, so tampered weights answered every row."""
    from arena_kd.common.io import read_keyed_table, write_keyed_table
    from arena_kd.submission.student_infer import load_student

    cfg, d = export_copy
    ref = d / "reference_logits.parquet"
    if damage == "reference deleted":
        ref.unlink()
    else:
        table, meta = read_keyed_table(ref)
        write_keyed_table(ref, table.head(2), meta)
    with pytest.raises(RuntimeError, match="is missing|NOT VERIFIED"):
        load_student(d, quantization="none", dtype="fp32", devices=["cpu"])
    # through the submission: every row gets the fallback, and why is recorded
    test = cfg.data.test
    out = d.parent / "out" / "submission.csv"
    c = cfg.model_copy(deep=True)
    c.submission.student_dir = str(d)
    res = run_mod.run_submission(c, test=test, out=str(out), progress=False)
    assert all(k.endswith("+none") for k in res.counts)
    err = json.loads(out.with_name("submission.run.json").read_text())["student_error"]
    assert "student failed to load" in err and ("cannot be verified" in err or "NOT VERIFIED" in err)


def test_export_made_without_reference_rows_is_used_unchecked(export_copy):
    """student.reference_rows: 0 (export.json records 0) is the user's choice of no check: used, with a warning."""
    from arena_kd.submission.student_infer import load_student

    _, d = export_copy
    (d / "reference_logits.parquet").unlink()
    (d / "reference_logits.meta.json").unlink(missing_ok=True)
    _rewrite_export_json(d, reference_rows=0)
    backend = load_student(d, quantization="none", dtype="fp32", devices=["cpu"])
    assert backend.checks == {"cpu": None}


# --------------------------------------------------------------------------- pickled weights are never loaded


def _pickled_weights_only(model_dir: Path) -> None:
    """Replace model.safetensors by the same weights as a pickled pytorch_model.bin (what a tampered folder holds)."""
    import torch
    from safetensors.torch import load_file

    st = model_dir / "model.safetensors"
    torch.save(load_file(str(st)), model_dir / "pytorch_model.bin")
    st.unlink()


def test_student_export_with_pickled_weights_is_refused(export_copy):
    from arena_kd.llm.export import load_export

    _, d = export_copy
    load_export(d, quantization="none", dtype="fp32", device="cpu")  # the intact copy loads
    _pickled_weights_only(d / "model")
    with pytest.raises(OSError, match="safetensors"):
        load_export(d, quantization="none", dtype="fp32", device="cpu")


def test_sentence_embedder_with_pickled_weights_is_refused(export_copy, tmp_path):
    """blend.embeddings loads its encoder safetensors-only too (the export's tiny model stands in for one)."""
    import shutil

    from arena_kd.blend.embeddings import SentenceEmbedder

    _, d = export_copy
    enc = tmp_path / "encoder"
    shutil.copytree(d / "model", enc)
    for f in (d / "tokenizer").iterdir():
        shutil.copy(f, enc / f.name)
    SentenceEmbedder(str(enc), max_length=16)._load()  # the intact copy loads
    _pickled_weights_only(enc)
    with pytest.raises(OSError, match="safetensors"):
        SentenceEmbedder(str(enc), max_length=16)._load()
