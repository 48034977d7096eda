"""data.text's shared helpers (standard library only): the id column of a CSV file and its header names, and the
tolerant test reader's single read of a non-CSV file; data.schema.swap_logits follows common.keys.SWAP_PERMUTATION."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arena_kd.common.keys import SWAP_PERMUTATION
from arena_kd.data.schema import swap_logits
from arena_kd.data.text import csv_header, read_id_column


def test_csv_header_drops_spaces_and_byte_order_marks():
    assert csv_header(["\ufeffid ", " prompt", "winner_tie\t"]) == ["id", "prompt", "winner_tie"]
    assert csv_header([]) == []


def test_read_id_column_order_repeats_encoding_and_missing_column(tmp_path):
    p = tmp_path / "sample_submission.csv"
    # BOM, a spaced header, a repeated id, a blank id, a short row, a cp1252 byte in an id
    p.write_bytes(b"\xef\xbb\xbf id ,winner_model_a\n7,0.3\n3,0.3\n7,0.3\n,0.3\n\n5\xe9,0.3\n")
    ids = read_id_column(p)
    assert ids[:2] == ["7", "3"] and len(ids) == 3 and ids[2].startswith("5")
    (tmp_path / "latin.csv").write_bytes("id,x\nna\xefve,1\ncaf\xe9,2\n".encode("latin-1"))
    assert read_id_column(tmp_path / "latin.csv") == ["naïve", "café"]
    (tmp_path / "noid.csv").write_text("key,x\n1,2\n")
    with pytest.raises(ValueError, match="column 'id' is missing"):
        read_id_column(tmp_path / "noid.csv")


def test_tolerant_reader_reads_a_non_csv_file_once(tmp_path, monkeypatch):
    """The strict reader refuses the file (a null turn list); the tolerant reader checks the id column and builds the
    frame from one read of the records (it used to read them twice)."""
    from arena_kd.data import containers, readers  # noqa: F401 - the strict reader binds read_raw before the patch
    from arena_kd.submission import tolerant_reader

    rows = [{"id": 1, "prompt": '["hi"]', "response_a": '["a"]', "response_b": '["b"]'},
            {"id": 2, "prompt": None, "response_a": '["a"]', "response_b": '["b"]'}]
    p = tmp_path / "test.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    calls = []
    real = containers.read_raw
    monkeypatch.setattr(containers, "read_raw", lambda path: calls.append(path) or real(path))
    df = tolerant_reader.read_test_pairs(p)
    assert df["id"].tolist() == ["1", "2"] and df["prompt"].tolist() == [["hi"], [""]]
    assert len(calls) == 1  # the tolerant pass only


def test_swap_logits_is_the_shared_permutation():
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    out = swap_logits(x)
    assert out.dtype == np.float32 and np.array_equal(out, x[..., list(SWAP_PERMUTATION)])
    assert out is not x and not np.shares_memory(out, x)
    assert swap_logits([[1, 2, 3]]).dtype == np.float64
    assert np.array_equal(swap_logits(swap_logits(x)), x)
