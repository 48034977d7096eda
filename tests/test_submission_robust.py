"""The submission cannot crash on data: real sample rows with defects injected, a real (tiny, random) student.

Every case writes a test file from rows of data/sample/test.csv with one defect (or, in the property test,
random defects drawn with a seed), runs ``run_submission`` with the real tokenizer and model of an export
(tests/test_submission_real.py's ``export`` fixture) and the position-biased FakeStacker, and checks: a valid
file with every id, and that repaired rows still got the student. The student is loaded once per module
(loading is not what is tested here) and handed to every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_submission import FakeStacker, _assert_valid
from test_submission_real import export  # noqa: F401 - module fixture: a real tiny exported student

from arena_kd.common.keys import LABELS
from arena_kd.submission import run as run_mod
from arena_kd.submission.tolerant_reader import read_test_pairs, tolerant_kaggle_frame

ROOT = Path(__file__).resolve().parents[1]
N = 10
SURROGATE = "\ud83d"
SAMPLE = pd.read_csv(ROOT / "data/sample/test.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def backend(export):  # noqa: F811
    from arena_kd.submission.student_infer import load_student

    _, export_dir, _ = export
    return load_student(export_dir, quantization="none", dtype="fp32", devices=["cpu"])


@pytest.fixture()
def run(export, backend, tmp_path, monkeypatch):  # noqa: F811
    """run(path) -> (result, run.json dict): the submission on ``path`` with the real student, the fake stacker."""
    cfg, _, _ = export
    stacker = FakeStacker()
    monkeypatch.setattr(run_mod, "load_student", lambda *a, **k: backend)
    monkeypatch.setattr(run_mod, "load_stacker_or_none", lambda d, e=None: stacker)

    def go(path: Path, chunk_rows: int | None = None, **kw):
        out = path.with_name("out") / "submission.csv"
        c = cfg
        if chunk_rows is not None:
            c = cfg.model_copy(deep=True)
            c.submission.chunk_rows = chunk_rows
        res = run_mod.run_submission(c, test=str(path), out=str(out), progress=False, **kw)
        return res, json.loads(out.with_name("submission.run.json").read_text()), out

    go.stacker = stacker
    return go


def _rows(n: int = N, start: int = 0) -> list[list[str]]:
    return SAMPLE.iloc[start:start + n][["id", "prompt", "response_a", "response_b"]].values.tolist()


def _write(path: Path, rows: list[list[str]], encoding: str = "utf-8", newline: str = "\n",
           errors: str = "strict") -> Path:
    """CSV bytes written by hand (csv module quoting), so any encoding / line ending / broken row is possible."""
    import csv
    import io

    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator=newline)
    w.writerow(["id", "prompt", "response_a", "response_b"])
    for r in rows:
        w.writerow(r)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue().encode(encoding, errors))
    return path


def _ids(rows) -> list[str]:
    return [r[0] for r in rows]


def _paths(out: Path) -> pd.DataFrame:
    return pd.read_csv(out.with_name("submission.paths.csv"), dtype=str, keep_default_na=False)


# --------------------------------------------------------------------------- one defect at a time

CELL_DEFECTS = {
    "lone surrogate (JSON escape)": ("response_a", json.dumps([f"smile {SURROGATE} here"])),
    "lone surrogate among valid pairs": ("response_b", json.dumps([f"{SURROGATE} and \U0001F600 and {SURROGATE}x"])),
    "null turn": ("response_b", '["first", null]'),
    "null cell": ("response_a", "null"),
    "empty list": ("prompt", "[]"),
    "empty cell": ("response_a", ""),
    "not JSON": ("response_a", "just some text, not JSON ["),
    "non-string turns": ("response_b", '[42, {"a": [1, 2]}, true]'),
    "JSON object": ("prompt", '{"role": "user", "content": "hi"}'),
    "bare JSON string": ("response_a", '"a bare string"'),
    "deeply nested": ("response_a", "[" * 5000 + "]" * 5000),
    "200k-character answer": ("response_b", json.dumps(["word " * 40_000])),
    "unequal turn counts": ("prompt", json.dumps(["turn one", "turn two", "turn three"])),
    "NUL character": ("response_a", json.dumps(["nul\x00inside"])),
}


@pytest.mark.parametrize("defect", list(CELL_DEFECTS))
def test_each_cell_defect_is_repaired_and_scored(run, tmp_path, defect):
    col, value = CELL_DEFECTS[defect]
    rows = _rows()
    rows[3][["id", "prompt", "response_a", "response_b"].index(col)] = value
    res, summary, out = run(_write(tmp_path / "test.csv", rows, errors="surrogatepass"))
    _assert_valid(out, _ids(rows))
    # repaired, so the student (and the stacker on its logits) scored every row, the defective one included
    assert res.counts == {"stacker+tta": N}, (res.counts, summary["fallback_reasons"])
    assert summary["fallback_reasons"] == {} and summary["nonfinite_logit_rows"] == 0


def test_surrogate_null_and_unequal_turns_together(run, tmp_path):
    """The issue's first report: a lone surrogate, a null turn and unequal turn counts in one file — exit 1 before."""
    rows = _rows(30)
    rows[3][2] = json.dumps([f"smile {SURROGATE} here"])
    rows[7][1] = '["p1"]'
    rows[7][3] = '["first", null]'
    res, summary, out = run(_write(tmp_path / "test.csv", rows, errors="surrogatepass"))
    _assert_valid(out, _ids(rows))
    assert res.counts == {"stacker+tta": 30}
    assert set(summary["test_repairs"]) >= {"invalid unicode", "null turn", "unequal turn counts"}
    df = tolerant_kaggle_frame(tmp_path / "test.csv")
    assert df.loc[3, "response_a"][0] == "smile \ufffd here"  # (row 3 has a 2-turn prompt: padded)
    assert df.loc[7, "prompt"] == ["p1", ""] and df.loc[7, "response_b"] == ["first", ""]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp1252", "latin-1"])
def test_legacy_encodings_and_a_malformed_row(run, tmp_path, encoding):
    """The issue's second report: a latin-1 file with a malformed row left no file at all."""
    rows = _rows()
    rows[1][2] = json.dumps(["café, naïve, déjà vu — ½"], ensure_ascii=False)
    rows[4][3] = "not json"
    path = _write(tmp_path / "test.csv", rows, encoding=encoding if encoding != "cp1252" else "cp1252",
                  errors="replace")
    res, summary, out = run(path)
    _assert_valid(out, _ids(rows))
    assert res.counts == {"stacker+tta": N}
    df = read_test_pairs(path)
    assert "café" in df.loc[1, "response_a"][0]  # decoded as the legacy encoding, not as U+FFFD


def test_crlf_line_endings_and_quoted_newlines(run, tmp_path):
    rows = _rows()
    rows[2][2] = json.dumps(["line one\r\nline two\rline three\u2028four"])
    path = _write(tmp_path / "test.csv", rows, newline="\r\n")
    res, _, out = run(path)
    _assert_valid(out, _ids(rows))
    assert res.counts == {"stacker+tta": N}
    assert read_test_pairs(path).loc[2, "response_a"] == ["line one\r\nline two\rline three\u2028four"]


def test_stray_undecodable_bytes_in_a_utf8_file(run, tmp_path):
    rows = _rows()
    rows[2][2] = json.dumps(["naïve"], ensure_ascii=False)
    path = _write(tmp_path / "test.csv", rows)
    path.write_bytes(path.read_bytes().replace(b"Hawaii", b"Haw\xff\xfeaii", 1))
    res, _, out = run(path)
    _assert_valid(out, _ids(rows))
    assert res.counts == {"stacker+tta": N}


def test_ragged_rows_missing_ids_and_repeated_ids(run, tmp_path):
    """Too few / too many fields are padded / cut; a row without an id cannot be answered; a repeated id keeps its
    first row."""
    rows = _rows()
    rows[2] = rows[2][:2]  # prompt only
    rows[5] = rows[5] + ["an", "extra"]
    rows.append(["", '["q"]', '["a"]', '["b"]'])
    rows.append([rows[0][0], '["q"]', '["a"]', '["b"]'])
    path = _write(tmp_path / "test.csv", rows)
    res, summary, out = run(path)
    _assert_valid(out, _ids(rows[:N]))
    assert sum(res.counts.values()) == N
    assert summary["test_repairs"]["wrong field count"] == 2
    assert summary["test_repairs"]["no id (row dropped)"] == 1
    assert summary["test_repairs"]["repeated id (row dropped)"] == 1


def test_missing_text_column_is_read_as_empty(run, tmp_path):
    rows = [r[:3] for r in _rows()]
    path = tmp_path / "test.csv"
    pd.DataFrame(rows, columns=["id", "prompt", "response_a"]).to_csv(path, index=False)
    res, summary, out = run(path)
    _assert_valid(out, _ids(rows))
    assert sum(res.counts.values()) == N
    assert any("response_b" in k for k in summary["test_repairs"])


def test_header_only_file_gives_a_header_only_submission(run, tmp_path):
    path = _write(tmp_path / "test.csv", [])
    res, _, out = run(path)
    assert pd.read_csv(out).columns.tolist() == ["id", *LABELS] and len(pd.read_csv(out)) == 0
    assert res.counts == {}


def test_no_id_column_is_the_one_refusal(tmp_path):
    from arena_kd.common.errors import UserError

    path = tmp_path / "test.csv"
    path.write_text("prompt,response_a,response_b\n\"[1\",x,y\n")
    with pytest.raises(UserError, match="test.csv: missing column.*'id'"):
        read_test_pairs(path)


# --------------------------------------------------------------------------- the student loses only what fails


def test_rows_the_tokenizer_refuses_cost_only_those_rows(backend):
    """Unrepaired text (a frame built by hand, not by the reader) makes the real tokenizer raise TypeError; the
    length pass isolates the two bad rows, which go to the fallback with the reason, and the others are scored."""
    from arena_kd.data.readers import read_pairs
    from arena_kd.submission.budget import Deadline, Governor
    from arena_kd.submission.student_pass import run_student_pass

    df = read_pairs(ROOT / "data/sample/test.csv").head(40).reset_index(drop=True)
    df.at[5, "response_a"] = [f"bad {SURROGATE}"]
    df.at[31, "prompt"] = [f"{SURROGATE}"]
    res = run_student_pass(backend, df, Governor(Deadline(1e6), reserve_s=0.0), max_length=64, degraded_max_length=32,
                           tokens_per_batch=512, max_batch_size=8, chunk_rows=8, progress=False)
    lost = [i for i, m in enumerate(res.mode) if m is None]
    assert lost == [5, 31]
    assert all(res.reason[i].startswith("rendering/tokenizing failed: TypeError") for i in lost)
    assert np.isfinite(np.delete(res.orig, lost, axis=0)).all()


def test_non_finite_logits_never_reach_the_stacker(run, backend, tmp_path, monkeypatch):
    """fp16 overflow stand-in: NaN / inf logits for some rows. Those rows are counted, keep the features-only answer,
    and the stacker is never handed a non-finite student feature (LightGBM would read NaN as 'missing')."""
    real = backend.predict
    seen = []

    def overflowing(df, **kw):
        orig, swap = real(df, **kw)
        orig, swap = orig.copy(), None if swap is None else swap.copy()
        orig[0, 1] = np.nan
        if swap is not None and len(df) > 1:
            swap[1, 0] = np.inf
        return orig, swap

    monkeypatch.setattr(backend, "predict", overflowing)
    real_stack = run.stacker.predict

    def spy(df, student):
        if student is not None:
            seen.append(np.concatenate([student["orig"],
                                        student["swap"] if student.get("swap") is not None else student["orig"]]))
        return real_stack(df, student)

    run.stacker.predict = spy
    rows = _rows(24)
    res, summary, out = run(_write(tmp_path / "test.csv", rows), chunk_rows=8)
    _assert_valid(out, _ids(rows))
    bad = summary["nonfinite_logit_rows"]
    assert bad >= 2 and res.counts["features_only+none"] == bad and res.counts["stacker+tta"] == 24 - bad
    assert seen and all(np.isfinite(x).all() for x in seen)
    assert summary["fallback_reasons"] == {"non-finite student logits": bad}
    paths = _paths(out)
    assert (paths.loc[paths["student"] == "none", "reason"] == "non-finite student logits").all()
    assert (paths.loc[paths["student"] == "tta", "reason"] == "").all()


def test_a_failing_chunk_costs_only_its_rows(run, backend, tmp_path, monkeypatch):
    """A CUDA error on one chunk: its rows keep the fallback (reason in paths.csv and run.json), later chunks are
    scored."""
    real = backend.predict
    calls = []

    def flaky(df, **kw):
        calls.append(len(df))
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return real(df, **kw)

    monkeypatch.setattr(backend, "predict", flaky)
    rows = _rows(40)
    res, summary, out = run(_write(tmp_path / "test.csv", rows), chunk_rows=16)
    _assert_valid(out, _ids(rows))
    assert len(calls) == 4  # chunks of 4 (warm-up), 16, 16, 4 rows
    lost = calls[1]
    assert res.counts == {"stacker+tta": 40 - lost, "features_only+none": lost}
    reason = "student chunk failed: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert summary["fallback_reasons"] == {reason: lost}
    assert (_paths(out)["reason"] == reason).sum() == lost


# --------------------------------------------------------------------------- property test

DEFECTS = [
    lambda rng, v: json.dumps([f"x{SURROGATE}y"]),
    lambda rng, v: v.replace('"]', '", null]', 1) if v.endswith('"]') else "null",
    lambda rng, v: "[]",
    lambda rng, v: "",
    lambda rng, v: "null",
    lambda rng, v: v[: int(rng.integers(0, max(1, len(v))))],  # truncated JSON
    lambda rng, v: json.dumps([int(rng.integers(0, 100)), None, {"k": "v"}]),
    lambda rng, v: json.dumps(["z" * 150_000]),
    lambda rng, v: json.dumps(["a", "b", "c"][: int(rng.integers(1, 4))]),
    # random code points, lone surrogates
    lambda rng, v: "".join(chr(int(c)) for c in rng.integers(1, 0x2FFF, size=40)),
    lambda rng, v: v + '"',  # a stray quote
    lambda rng, v: "\x00" + v,
    lambda rng, v: "éàü “quoted” ½",
]


def _corrupt(rows, rng) -> list[list[str]]:
    rows = [list(r) for r in rows]
    for _ in range(int(rng.integers(1, 6))):
        r, c = int(rng.integers(0, len(rows))), int(rng.integers(1, 4))
        rows[r][c] = DEFECTS[int(rng.integers(0, len(DEFECTS)))](rng, rows[r][c])
    return rows


@pytest.mark.parametrize("seed", range(12))
def test_randomly_corrupted_cells_always_give_a_valid_file(run, tmp_path, seed):
    """Seeded: 1-5 random defects in random cells of 8 real rows, a random encoding and line ending; every time a
    valid file with every id, and every row either scored by the student or given a reason."""
    rng = np.random.default_rng(seed)
    rows = _corrupt(_rows(8, start=int(rng.integers(0, len(SAMPLE) - 8))), rng)
    encoding = ["utf-8", "utf-8-sig", "cp1252", "latin-1"][int(rng.integers(0, 4))]
    newline = ["\n", "\r\n"][int(rng.integers(0, 2))]
    path = _write(tmp_path / "test.csv", rows, encoding=encoding, newline=newline,
                  errors="surrogatepass" if encoding.startswith("utf") else "replace")
    res, summary, out = run(path)
    _assert_valid(out, _ids(rows))
    paths = _paths(out)
    assert sum(res.counts.values()) == 8
    assert ((paths["student"] != "none") | (paths["reason"] != "")).all()
    assert summary["nonfinite_logit_rows"] == 0


# --------------------------------------------------------------------------- the CLI


def test_cli_exit_0_on_a_defective_file_without_artifacts(tmp_path):
    """`arena-kd submission` as a user runs it: lone surrogate + null turn + unequal turns, latin-1 bytes, no
    student or stacker in the workdir → exit 0 and a valid file (the class prior)."""
    rows = _rows(12)
    rows[3][2] = json.dumps([f"smile {SURROGATE} here"])
    rows[7][1] = '["p1"]'
    rows[7][3] = '["first", null]'
    path = _write(tmp_path / "test.csv", rows, errors="surrogatepass")
    path.write_bytes(path.read_bytes().replace(b"Hawaii", "Hawaï".encode("latin-1"), 1))
    out = tmp_path / "out" / "submission.csv"
    proc = subprocess.run([sys.executable, "-m", "arena_kd", "submission", "--config", str(ROOT / "configs/smoke.yaml"),
                           "--set", f"workdir={tmp_path / 'work'}",
                           "--set", f"data.train={ROOT / 'data/sample/train.csv'}",
                           "--test", str(path), "--out", str(out), "--time-budget", "2m"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_valid(out, _ids(rows))
    assert set(_paths(out)["head"]) == {"prior"}


def test_unwritable_output_is_one_line(run, tmp_path, export):  # noqa: F811
    """A broken environment is the one failure left: an output whose folder cannot be created → one UserError line."""
    from arena_kd.common.errors import UserError

    cfg, _, _ = export
    rows = _rows(4)
    path = _write(tmp_path / "test.csv", rows)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"a-file/submission.csv: cannot write the submission \(") as exc:
        run_mod.run_submission(cfg, test=str(path), out=str(blocker / "submission.csv"), progress=False)
    assert "\n" not in str(exc.value)


def test_a_broken_tokenizer_is_given_up_quickly():
    """When every row fails to render (the tokenizer itself is broken) the bisection stops early: a bounded number
    of calls, every row carries the reason, none is left without one."""
    from arena_kd.submission.student_pass import lengths_isolating_failures

    calls = []

    class Broken:
        def lengths(self, df, max_length):
            calls.append(len(df))
            raise OSError("tokenizer.json is corrupt")

    df = pd.DataFrame({"id": [str(i) for i in range(5000)]})
    lens, failed = lengths_isolating_failures(Broken(), df, 64)
    assert sorted(failed) == list(range(5000)) and len(calls) < 5000 // 4
    assert set(failed.values()) == {"rendering/tokenizing failed: OSError: tokenizer.json is corrupt"}


def test_invalid_features_only_rows_get_the_prior(run, tmp_path):
    """A features-only stacker that returns NaN for some rows (and then fails on the student's logits): those rows
    get the class prior, the others keep the features-only answer; the file is valid throughout."""
    stacker = run.stacker
    real_predict = stacker.predict

    def nan_rows(df):
        p = real_predict(df, None)
        p[:2] = np.nan
        return p

    def broken_with_student(df, student):
        raise ValueError("stacker broke")

    stacker.predict_features_only = nan_rows
    stacker.predict = broken_with_student
    rows = _rows(8)
    res, summary, out = run(_write(tmp_path / "test.csv", rows))
    sub = _assert_valid(out, _ids(rows))
    assert res.counts == {"prior+none": 2, "features_only+none": 6}
    assert summary["fallback_reasons"] == {"stacker on student logits failed: ValueError: stacker broke": 8}
    p = sub[list(LABELS)].to_numpy()
    assert np.allclose(p[0], p[1]) and p[0, 0] == pytest.approx(p[0, 1])  # the A/B-pooled prior


def test_importing_the_submission_does_not_load_torch():
    # the fallback answer is written before the student loads: a broken or slow torch import must not come first
    code = "import sys, arena_kd.submission.run; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_freeing_accelerator_memory_never_raises(monkeypatch):
    # it runs inside the chunk-failure handler: a CUDA context already in error must not raise a second time
    import torch

    from arena_kd.llm.placement import free_accelerator_memory

    def broken():
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", broken)
    free_accelerator_memory()  # returns
