"""Faults end in one line: unreadable resume files are redone or named with --force; --set on YAML anchors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd.common.config import load_config
from arena_kd.common.errors import UserError
from arena_kd.common.io import sidecar_path, write_keyed_table

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs/smoke.yaml"


# --------------------------------------------------------------------------- --set and YAML anchors


def test_smoke_config_really_uses_anchors():
    """The premise of the tests below: student.model/train/predict are aliases of the teachers' in the YAML."""
    text = SMOKE.read_text()
    assert "model: *tiny_gemma2" in text and "train: *tiny_train" in text and "predict: *tiny_predict" in text


def test_set_on_an_alias_touches_only_the_named_key():
    base = load_config(SMOKE)
    cfg = load_config(SMOKE, ["student.train.epochs=7", "student.predict.tta=false", "student.model.lora.r=8"])
    assert cfg.student.train.epochs == 7 and cfg.student.predict.tta is False and cfg.student.model.lora.r == 8
    for t, t0 in zip(cfg.teachers.models, base.teachers.models):
        assert t.train.epochs == t0.train.epochs == 1
        assert t.predict.tta is True and t.model.lora.r == t0.model.lora.r == 4
    assert cfg.submission.predict.tta is True  # the submission's TTA is its own setting
    assert base.student.model == base.teachers.models[0].model  # without --set the aliases still agree


def test_set_on_a_teacher_alias_leaves_the_student_alone():
    cfg = load_config(SMOKE, ["teachers.models.0.model.random_init.hidden_size=64"])
    assert cfg.teachers.models[0].model.random_init["hidden_size"] == 64
    assert cfg.student.model.random_init["hidden_size"] == 32


@pytest.mark.parametrize("override,key", [
    ("student.train.epochs=-3", "student.train.epochs"),
    ("student.model.lora.r=x", "student.model.lora.r"),
    ("student.predict.no_such_knob=1", "student.predict.no_such_knob"),
])
def test_bad_set_value_is_reported_under_the_key_the_user_wrote(override, key):
    with pytest.raises(UserError) as exc:
        load_config(SMOKE, [override])
    msg = str(exc.value)
    assert msg.startswith(f"{SMOKE}: {key}: ") and msg.endswith(f"(from --set {override})") and "\n" not in msg
    assert "teachers" not in msg


# --------------------------------------------------------------------------- unreadable fold files


def _fold_file(tmp_path: Path) -> tuple[Path, dict]:
    from arena_kd.kfold.runner import fold_path

    hashes = {"config": "abc", "data": "def"}
    path = fold_path(tmp_path, 0)
    df = pd.DataFrame({"id": [str(i) for i in range(50)], "fold": 0, "logit_a": np.arange(50, dtype=np.float32)})
    write_keyed_table(path, df, {"fold": 0, "hashes": hashes, "metrics": {"log_loss": 1.0}})
    return path, hashes


def test_intact_fold_file_is_done_and_a_changed_hash_is_refused(tmp_path):
    from arena_kd.kfold.runner import fold_is_done

    path, hashes = _fold_file(tmp_path)
    assert fold_is_done(path, hashes, force=False)
    with pytest.raises(UserError, match="config hash differs.*--force"):
        fold_is_done(path, {**hashes, "config": "zzz"}, force=False)


@pytest.mark.parametrize("damage", ["truncated parquet", "empty parquet", "truncated sidecar", "sidecar not an object",
                                    "sidecar not utf-8"])
def test_unreadable_fold_file_is_redone_with_one_line(tmp_path, damage):
    from arena_kd.kfold.runner import fold_is_done

    path, hashes = _fold_file(tmp_path)
    side = sidecar_path(path)
    if damage == "truncated parquet":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty parquet":
        path.write_bytes(b"")
    elif damage == "truncated sidecar":
        side.write_text(side.read_text()[:20])
    elif damage == "sidecar not an object":
        side.write_text("[1, 2]")
    else:
        side.write_bytes(b"\xff\xfe{")
    lines: list[str] = []
    assert fold_is_done(path, hashes, force=False, log=lines.append) is False
    assert len(lines) == 1 and lines[0].startswith(f"{path}: unreadable fold file or sidecar (")
    assert lines[0].endswith("redoing the fold")


def test_run_folds_redoes_a_truncated_fold(tmp_path):
    """The stage loop: fold 0 intact (skipped), fold 1 truncated (redone with a line, then replaced)."""
    from arena_kd.kfold.runner import FaultInjector, fold_path, run_folds

    frame = pd.DataFrame({"id": [str(i) for i in range(20)], "label": np.arange(20) % 3, "fold": np.arange(20) % 2})
    hashes = {"config": "h"}
    calls = []

    def fit_predict(k, train_df, valid_df, fold_dir):
        calls.append(k)
        z = np.zeros((len(valid_df), 3), dtype=np.float32)
        return {"avg": z, "orig": z, "swap": z}, {}

    run_folds(frame, tmp_path, hashes, fit_predict, force=False, fault=FaultInjector(None), label="t",
              log=lambda m: None)
    assert calls == [0, 1]
    p1 = fold_path(tmp_path, 1)
    p1.write_bytes(p1.read_bytes()[:100])
    lines: list[str] = []
    run_folds(frame, tmp_path, hashes, fit_predict, force=False, fault=FaultInjector(None), label="t", log=lines.append)
    assert calls == [0, 1, 1]
    assert any(line.startswith(f"{p1}: unreadable fold file") for line in lines)
    assert pd.read_parquet(p1)["id"].tolist() == [str(i) for i in range(1, 20, 2)]


# --------------------------------------------------------------------------- final.json / export.json


@pytest.mark.parametrize("content", [b'{"hashes": {"a"', b"", b"\xff\xfe\x00", b'["not", "an", "object"]'])
def test_unreadable_stage_record_is_one_line_naming_file_and_force(tmp_path, content):
    from arena_kd.llm.export import read_export_settings, read_json_record

    path = tmp_path / "final.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as exc:
        read_json_record(path, "rerun `arena-kd distill --force` to redo the final stage")
    msg = str(exc.value)
    assert msg.startswith(f"{path}: unreadable final.json (") and msg.endswith("--force` to redo the final stage")
    assert "\n" not in msg
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "export.json").write_bytes(content)
    with pytest.raises(UserError, match=r"export\.json: unreadable export\.json .*--force"):
        read_export_settings(tmp_path / "export")


def test_truncated_final_json_stops_distill_with_one_line(tmp_path):
    """The resume check of the final stage reads final.json before training anything."""
    from arena_kd.student.run import _final_stage

    cfg = load_config(SMOKE, [f"workdir={tmp_path}"])
    record = tmp_path / "student" / "final" / "final.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"hashes": {"config": "ab')
    with pytest.raises(UserError, match=r"final\.json: unreadable final\.json \(invalid JSON.*--force"):
        _final_stage(cfg, pd.DataFrame(), {"config": "x"}, None, force=False)
