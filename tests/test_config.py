"""Config validation: every shipped config parses; bad keys/values fail with one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from arena_kd.common.config import PipelineConfig, apply_overrides, load_config, write_resolved
from arena_kd.common.errors import UserError

CONFIGS = sorted(Path("configs").glob("*.yaml"))


def test_configs_found():
    names = {p.name for p in CONFIGS}
    assert {"smoke.yaml", "demo.yaml", "kaggle-gemma2.yaml"} <= names


OVERRIDE_FILES = {"rehearsal.yaml": "kaggle-gemma2.yaml"}  # override file -> the base it is laid over (make rehearsal)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path):
    base = OVERRIDE_FILES.get(path.name)
    cfg = load_config([path.with_name(base), path] if base else path)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.folds.n_folds >= 2 and cfg.workdir
    # round trip: the resolved config is itself a valid config
    again = PipelineConfig.model_validate(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BASE = """
workdir: runs/t
data: {train: data/sample/train.csv}
student:
  model: {backbone: random, random_init: {model_type: llama}}
"""


def test_unknown_key_one_line(tmp_path):
    p = _write(tmp_path, BASE + "stacking: {num_leafs: 7}\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: stacking.num_leafs: unknown key"


def test_bad_range_and_type(tmp_path):
    p = _write(tmp_path, BASE + "folds: {n_folds: 1}\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: folds.n_folds: ") and "greater than or equal to 2" in msg and "\n" not in msg
    p = _write(tmp_path, BASE + "render: {truncation: middle}\n")
    with pytest.raises(UserError, match=r"render.truncation: Input should be 'budget', 'left' or 'keep_last_turns'"):
        load_config(p)


def test_missing_required_and_bad_yaml(tmp_path):
    p = _write(tmp_path, "workdir: x\n")
    with pytest.raises(UserError, match=r"c.yaml: data: required key is missing"):
        load_config(p)
    p = _write(tmp_path, "workdir: [unclosed\n")
    with pytest.raises(UserError, match=r"c.yaml: line \d+ invalid YAML"):
        load_config(p)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_set_overrides_including_list_index():
    cfg = load_config("configs/smoke.yaml", ["seed=7", "render.max_length=128", "teachers.models.1.weight=2.5",
                                             "data.extra=[a.csv, b.csv]", "folds.file=null"])
    assert cfg.seed == 7 and cfg.render.max_length == 128
    assert cfg.teachers.models[1].weight == 2.5 and cfg.teachers.models[0].weight is None
    assert cfg.data.extra == ["a.csv", "b.csv"] and cfg.folds.file is None
    with pytest.raises(UserError, match="teachers.models.9.weight: no list item '9'"):
        load_config("configs/smoke.yaml", ["teachers.models.9.weight=1"])
    with pytest.raises(UserError, match="not of the form dotted.key=value"):
        load_config("configs/smoke.yaml", ["seed"])
    with pytest.raises(UserError, match=r"smoke.yaml: render.max_length: .*greater than or equal to 16"):
        load_config("configs/smoke.yaml", ["render.max_length=3"])
    with pytest.raises(UserError, match=r"smoke.yaml: render.colour: unknown key"):
        load_config("configs/smoke.yaml", ["render.colour=red"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_write_resolved(tmp_path):
    cfg = load_config("configs/smoke.yaml", ["seed=3"])
    path = write_resolved(cfg, tmp_path / "stage")
    assert load_config(path) == cfg


def test_on_off_yes_no_stay_words_in_configs_and_overrides(tmp_path):
    """YAML 1.2 booleans: `prior_match: off` is the word off, not False (under YAML 1.1 it was refused)."""
    from arena_kd.common.config import load_yaml_text

    assert load_yaml_text("a: off\nb: yes\nc: true\nd: FALSE\ne: on", "x") == {
        "a": "off", "b": "yes", "c": True, "d": False, "e": "on"}
    cfg = load_config("configs/demo.yaml", ["student.distill.prior_match=off", "student.oof=yes"])
    assert cfg.student.distill.prior_match == "off" and cfg.student.oof is True  # bool fields still take yes/no
    layer = tmp_path / "layer.yaml"
    layer.write_text("student:\n  distill: {prior_match: off}\n")
    assert load_config(["configs/demo.yaml", layer]).student.distill.prior_match == "off"


@pytest.mark.parametrize("name", ["demo.yaml", "demo-full.yaml"])
def test_demo_configs_keep_the_designs_shape(name):
    """Issue 21's shape at demo scale: every teacher reads longer inputs than the student, and where a teacher shares
    the student's backbone it keeps more of its layers (num_layers None = all of them)."""
    cfg = load_config(f"configs/{name}")
    student_len = cfg.student.train.max_length or cfg.render.max_length
    student_layers = cfg.student.model.num_layers
    for t in cfg.teachers.models:
        teacher_len = t.train.max_length or cfg.render.max_length
        assert teacher_len > student_len, (t.name, teacher_len, student_len)
        assert (t.predict.max_length or cfg.render.max_length) >= teacher_len, t.name  # predicts what it trained on
        if t.model.backbone == cfg.student.model.backbone and t.model.gguf_file == cfg.student.model.gguf_file:
            assert student_layers is not None and (t.model.num_layers is None or t.model.num_layers > student_layers)
