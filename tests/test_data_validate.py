"""Validation: every bad-input case gives one line naming file, row and column; repairs are counted."""

from __future__ import annotations

import json

import pytest
from _data_fixtures import KAGGLE_TRAIN_HEADER, kaggle_row, write_csv

from arena_kd.common.errors import UserError
from arena_kd.data.readers import read_pairs
from arena_kd.data.text import repair_text
from arena_kd.data.validate import validate_data_report


def _train(tmp_path, rows, header=KAGGLE_TRAIN_HEADER, name="train.csv"):
    return write_csv(tmp_path / name, header, rows)


def _ok(i, **kw):
    return kaggle_row(i, [f"q{i}"], [f"a{i}"], [f"b{i}"], **kw)


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_missing_columns(tmp_path):
    path = _train(tmp_path, [[1, '["q"]', '["a"]']], header=["id", "prompt", "response_a"])
    with pytest.raises(UserError) as e:
        read_pairs(path, fmt="kaggle")
    assert "missing column(s) 'response_b'" in _one_line(e)


def test_partial_winner_columns(tmp_path):
    rows = [[1, '["q"]', '["a"]', '["b"]', 1]]
    path = _train(tmp_path, rows, header=["id", "prompt", "response_a", "response_b", "winner_model_a"])
    with pytest.raises(UserError, match="needs all three winner columns|but not winner_model_b"):
        read_pairs(path)


def test_duplicate_ids(tmp_path):
    path = _train(tmp_path, [_ok(1), _ok(2), _ok(1)])
    with pytest.raises(UserError) as e:
        read_pairs(path)
    assert _one_line(e) == f"{path}: row 3 (line 4), column 'id': duplicate id '1' (first seen at row 1 (line 2))"


@pytest.mark.parametrize("bits,problem", [([1, 1, 0], "exactly one-hot"), ([0, 0, 0], "exactly one-hot"),
                                          ([2, 0, 0], "must be 0 or 1"), (["yes", 0, 0], "must be 0 or 1")])
def test_labels_not_one_hot(tmp_path, bits, problem):
    row = _ok(5)
    row[6:9] = bits
    path = _train(tmp_path, [_ok(4), row])
    with pytest.raises(UserError) as e:
        read_pairs(path)
    msg = _one_line(e)
    assert msg.startswith(f"{path}: row 2 (line 3), column '") and problem in msg


def test_json_that_does_not_parse(tmp_path):
    row = _ok(2)
    row[4] = '["unterminated'
    path = _train(tmp_path, [_ok(1), row])
    with pytest.raises(UserError) as e:
        read_pairs(path)
    assert _one_line(e).startswith(f"{path}: row 2 (line 3), column 'response_a': not valid JSON")


def test_json_not_a_list(tmp_path):
    row = _ok(1)
    row[3] = '{"a": 1}'
    with pytest.raises(UserError, match="column 'prompt': expected a JSON list of turns"):
        read_pairs(_train(tmp_path, [row]))


def test_turn_counts_differ(tmp_path):
    path = _train(tmp_path, [kaggle_row(1, ["q1", "q2"], ["a1", "a2"], ["b1"])])
    with pytest.raises(UserError) as e:
        read_pairs(path)
    want = "row 1 (line 2), column 'response_b': turn counts differ: prompt has 2, response_a 2, response_b 1"
    assert want in _one_line(e)


def test_row_numbers_count_records_not_lines(tmp_path):
    # a quoted field spanning lines: row 2 starts on line 4
    bad = _ok(2)
    bad[3] = "not json"
    path = _train(tmp_path, [kaggle_row(1, ["q"], ["a"], ["b"], model_a="line one\nline two"), bad])
    with pytest.raises(UserError, match=r"row 2 \(line 4\), column 'prompt'"):
        read_pairs(path)


def test_null_turns_kept_and_counted(tmp_path):
    path = _train(tmp_path, [kaggle_row(1, ["q1", "q2"], ["a1", None], [None, None]), _ok(2)])
    df = read_pairs(path)
    assert df.loc[0, "response_a"] == ["a1", ""] and df.loc[0, "response_b"] == ["", ""]
    v = df.attrs["validation"]
    assert v["null_turns"] == 3 and v["rows_with_null_turns"] == 1
    assert v["empty_responses"] == 1  # response_b empty in every turn: flagged, kept


def test_lone_surrogates_and_invalid_bytes_repaired(tmp_path):
    row = _ok(1)
    row[4] = '["smile \\ud83d here", "pair \\ud83d\\ude00 ok"]'
    row[3] = '["q", "q2"]'
    row[5] = '["b", "b2"]'
    path = _train(tmp_path, [row])
    raw = path.read_bytes().replace(b'"m2"', b'"m\xff2"').replace(b",m2,", b",m\xff2,")
    path.write_bytes(raw)
    df = read_pairs(path)
    assert df.loc[0, "response_a"] == ["smile \ufffd here", "pair \U0001F600 ok"]
    assert df.loc[0, "model_b"] == "m\ufffd2"
    assert df.attrs["validation"]["repaired_unicode"] == 2
    assert repair_text("fine") == ("fine", False)


def test_non_string_turn_refused(tmp_path):
    row = _ok(1)
    row[5] = "[42]"
    with pytest.raises(UserError, match="column 'response_b': turn entries must be strings or null"):
        read_pairs(_train(tmp_path, [row]))


def test_unreadable_csv_and_field_count(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,prompt,response_a,response_b\n1,\"[\"\"q\"\"]\",x\n")
    with pytest.raises(UserError, match=r"row 1 \(line 2\): has 3 fields, header has 4"):
        read_pairs(path)
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="empty file"):
        read_pairs(empty)
    header_only = tmp_path / "h.csv"
    header_only.write_text("id,prompt,response_a,response_b\n")
    with pytest.raises(UserError, match="no data rows"):
        read_pairs(header_only)


def test_arena_errors_name_line(tmp_path):
    good = {"question_id": "1", "winner": "model_a", "conversation_a": [{"role": "user", "content": "q"},
                                                                        {"role": "assistant", "content": "a"}],
            "conversation_b": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}
    bad_winner = dict(good, question_id="2", winner="model_c")
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad_winner) + "\n")
    with pytest.raises(UserError, match=r"a.jsonl: row 2 \(line 2\), column 'winner': unknown winner 'model_c'"):
        read_pairs(path)
    path.write_text(json.dumps(good) + "\n\n{not json\n")  # a blank line: row 2 sits on line 3
    with pytest.raises(UserError, match=r"a.jsonl: row 2 \(line 3\): not valid JSON"):
        read_pairs(path)
    pq = tmp_path / "a.parquet"
    import pandas as pd

    pd.DataFrame([good, bad_winner]).to_parquet(pq)
    with pytest.raises(UserError, match=r"a.parquet: row 2 \(index 1\), column 'winner'"):
        read_pairs(pq)
    sep = dict(good, conversation_a=[{"role": "user", "content": "q\u2028x"}, {"role": "assistant", "content": "a"}])
    path.write_text(json.dumps(sep, ensure_ascii=False) + "\r\n")
    assert read_pairs(path).loc[0, "prompt"] == ["q\u2028x"]
    bad_role = dict(good, conversation_b=[{"role": "narrator", "content": "x"}])
    path.write_text(json.dumps(bad_role) + "\n")
    with pytest.raises(UserError, match="column 'conversation_b': unknown role 'narrator'"):
        read_pairs(path)
    uneven = dict(good, conversation_b=good["conversation_b"] * 2)
    path.write_text(json.dumps(uneven) + "\n")
    with pytest.raises(UserError, match="turn counts differ"):
        read_pairs(path)


def test_validate_data_report_prints_summary(tmp_path, capsys):
    path = _train(tmp_path, [kaggle_row(1, ["q1", "q2"], ["a1", None], ["b1", "b2"], label=2), _ok(2, label=0),
                             kaggle_row(3, ["q"], [""], ["b"], label=1)])
    s = validate_data_report(str(path))
    out = capsys.readouterr().out
    assert s["rows"] == 3 and s["labels"] == {"A wins": 1, "B wins": 1, "tie": 1, "unlabelled": 0}
    assert s["turns"] == {1: 2, 2: 1}
    assert s["repaired"]["null_turns"] == 1 and s["flagged"]["empty_responses"] == 1
    assert "3 rows (valid)" in out and "turns per row: 1: 2, 2: 1" in out and "p50" in out
    assert "1 null turns kept as empty" in out and "1 rows with an empty response" in out
    with pytest.raises(UserError, match="unknown format"):
        validate_data_report(str(path), fmt="tsv")


def test_unicode_line_separators_do_not_shift_rows(tmp_path):
    bad = _ok(2)
    bad[3] = "not json"
    path = _train(tmp_path, [kaggle_row(1, ["q"], ["x"], ["y"], model_a="m\r\nn", model_b="a\u2028b\x0cc\x85d"), bad])
    with pytest.raises(UserError, match=r"row 2 \(line 4\), column 'prompt'"):
        read_pairs(path)
    path = _train(tmp_path, [kaggle_row(1, ["q"], ["x"], ["y"], model_b="a\u2028b\x0cc\x85d")], name="ok.csv")
    assert read_pairs(path).loc[0, "model_b"] == "a\u2028b\x0cc\x85d"
