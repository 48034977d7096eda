"""Issue 21 item 4: the unlabelled-pair generator (data/unlabelled_pairs.py, `arena-kd make-pairs`) and the student's
extra rows (student/extra_pairs.py): never a test question, never a labelled pair again, folds by question, never
scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _fakes import fake_logits, patch_train_and_predict

import arena_kd.student.run as srun
import arena_kd.teachers.run as trun
from arena_kd.common.config import load_config
from arena_kd.common.errors import UserError
from arena_kd.common.io import read_keyed_table
from arena_kd.data.folds import prompt_groups
from arena_kd.data.readers import read_pairs
from arena_kd.data.unlabelled_pairs import generate_pairs, pair_keys, write_pairs
from arena_kd.pipeline import hard_student_config
from arena_kd.student.extra_pairs import NO_FOLD, ExtraPairs, assign_folds, filter_extra, rows_for_fold

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def _row(i, prompt, ma, ra, mb, rb, label=0, source="mt"):
    return {"id": str(i), "prompt": prompt, "response_a": ra, "response_b": rb, "label": label, "source": source,
            "model_a": ma, "model_b": mb}


def _frame(rows):
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int8")
    return df


ANS = {m: f"answer of {m}" for m in ("m1", "m2", "m3", "m4")}


def _answers():
    """Q1 (train): m1-m2, m3-m4 compared; Q2 (test question, turns 1 and 2): m1-m3."""
    return _frame([
        _row(1, ["Q1"], "m1", [ANS["m1"]], "m2", [ANS["m2"]]),
        _row(2, ["Q1"], "m4", [ANS["m4"]], "m3", [ANS["m3"]], label=1),
        _row(3, ["Q2"], "m1", ["x1"], "m3", ["x3"]),
        _row(4, ["q2 ", "more"], "m1", ["x1", "y1"], "m3", ["x3", "y3"]),  # turn 2 of Q2 (normalised first turn)
        _row(5, ["Q3"], "unknown", ["h1"], "unknown", ["h2"]),  # no model names (HH): gives nothing
    ])


def test_generator_pairs_every_uncompared_model_pair_of_a_training_prompt():
    test = _frame([_row(9, ["Q2"], "m1", ["x1"], "m2", ["x2"], label=None)])
    out = generate_pairs([_answers()], [], [test], seed=0)
    got = {(p[0], frozenset((a, b))) for p, a, b in zip(out["prompt"], out["model_a"], out["model_b"])}
    # Q1 has 4 models -> 6 pairs, 2 compared by humans -> 4; Q2 (both turns) is a test question; Q3 has no models
    assert got == {("Q1", frozenset(p)) for p in (("m1", "m3"), ("m1", "m4"), ("m2", "m3"), ("m2", "m4"))}
    for _, r in out.iterrows():  # each side is that model's own answer
        assert r["response_a"] == [ANS[r["model_a"]]] and r["response_b"] == [ANS[r["model_b"]]]
    assert out["id"].is_unique and "label" not in out.columns  # unlabelled: no winner columns


def test_generator_never_repeats_a_labelled_pair_in_either_orientation():
    labelled = _frame([_row(7, ["Q1"], "m3", [ANS["m3"]], "m1", [ANS["m1"]]),  # m1-m3 compared in another file
                       _row(8, ["Q1"], "other", [ANS["m4"]], "x", [ANS["m2"]])])  # the m2-m4 texts, other names
    out = generate_pairs([_answers()], [labelled], [], seed=0)
    got = {frozenset((a, b)) for p, a, b in zip(out["prompt"], out["model_a"], out["model_b"]) if p == ["Q1"]}
    assert got == {frozenset(("m1", "m4")), frozenset(("m2", "m3"))}
    known = set(pair_keys(_answers())) | set(pair_keys(labelled))
    assert not set(pair_keys(out)) & known


def test_generator_gives_one_pair_per_distinct_pair_of_answers():
    same = _frame([_row(1, ["Q1"], "m1", ["same"], "m2", ["same"]),  # two models, one text
                   _row(2, ["Q1"], "m3", ["other"], "m4", ["fourth"])])
    out = generate_pairs([same], [], [], seed=0)
    # uncompared: m1-m3, m1-m4, m2-m3, m2-m4; m1 and m2 answered alike, so m2-m3 repeats m1-m3 and m2-m4 repeats m1-m4
    assert len(out) == len(set(pair_keys(out))) == 2
    assert not ({frozenset(("m1", "m2")), frozenset(("m3", "m4"))}
                & {frozenset((a, b)) for a, b in zip(out["model_a"], out["model_b"])})


def test_generator_is_seeded_and_its_csv_reads_back_unlabelled(tmp_path):
    a = generate_pairs([_answers()], [], [], seed=1)
    pd.testing.assert_frame_equal(a, generate_pairs([_answers()], [], [], seed=1))
    flips = {s: tuple(generate_pairs([_answers()], [], [], seed=s)["model_a"]) for s in range(6)}
    assert len(set(flips.values())) > 1  # the seed draws which answer is A
    assert len(generate_pairs([_answers()], [], [], seed=1, max_pairs=2)) == 2
    back = read_pairs(write_pairs(a, tmp_path / "pairs.csv"))
    assert len(back) == len(a) and back["label"].isna().all()
    assert back["prompt"].tolist() == a["prompt"].tolist() and back["response_b"].tolist() == a["response_b"].tolist()


def test_make_pairs_on_the_sample_has_no_test_question_and_no_labelled_pair(tmp_path):
    from typer.testing import CliRunner

    from arena_kd.cli import app

    out = tmp_path / "pairs.csv"
    res = CliRunner().invoke(app, ["make-pairs", "--from", str(SAMPLE / "train.csv"), "--exclude",
                                   str(SAMPLE / "test.csv"), "--labelled", str(SAMPLE / "test_labels.csv"),
                                   "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    pairs, train, test = read_pairs(out), read_pairs(SAMPLE / "train.csv"), read_pairs(SAMPLE / "test_labels.csv")
    assert len(pairs) > 100 and pairs["label"].isna().all()
    assert not np.isin(prompt_groups(pairs), prompt_groups(test)).any()
    assert not set(pair_keys(pairs)) & (set(pair_keys(train)) | set(pair_keys(test)))
    compared = {(str(p), frozenset((a, b))) for p, a, b in zip(train["prompt"], train["model_a"], train["model_b"])}
    assert not any((str(p), frozenset((a, b))) in compared
                   for p, a, b in zip(pairs["prompt"], pairs["model_a"], pairs["model_b"]))


# --------------------------------------------------------------------------- the student's extra rows


def test_filter_drops_test_questions_copies_of_labelled_pairs_and_repeats():
    labelled = _frame([_row(1, ["Q1"], "m1", ["a"], "m2", ["b"])])
    test = _frame([_row(2, ["Q9"], "m1", ["a"], "m2", ["b"], label=None)])
    extra = _frame([_row("e1", ["q9", "turn 2"], "m1", ["a", "c"], "m2", ["b", "d"], label=None),  # test question
                    _row("e2", ["Q1"], "m2", ["b"], "m1", ["a"], label=None),  # the labelled pair, swapped
                    _row("e3", ["Q1"], "m3", ["c"], "m1", ["a"], label=None),  # kept
                    _row("e4", ["Q1"], "m1", ["a"], "m3", ["c"], label=None)])  # e3 again, swapped
    kept, counts = filter_extra(extra, labelled, test)
    assert kept["id"].tolist() == ["e3"]
    assert counts == {"read": 4, "on_test_question": 1, "copy_of_labelled": 1, "repeated": 1, "kept": 1}


def test_extra_rows_follow_their_question_and_never_train_its_fold():
    frame = _frame([_row(1, ["Q1"], "m1", ["a"], "m2", ["b"]), _row(2, ["Q2"], "m1", ["a"], "m2", ["b"])])
    frame["fold"] = [0, 1]
    extra = _frame([_row("e1", [" q1", "t2"], "m1", ["a", "x"], "m3", ["c", "y"], label=None),
                    _row("e2", ["Q2"], "m3", ["c"], "m2", ["b"], label=None),
                    _row("e3", ["Q7"], "m3", ["c"], "m2", ["b"], label=None)])
    extra["fold"] = assign_folds(extra, frame)
    assert extra["fold"].tolist() == [0, 1, NO_FOLD]
    ep = ExtraPairs(extra, {}, "h")
    assert rows_for_fold(ep, 0)["id"].tolist() == ["e2", "e3"] and rows_for_fold(ep, 1)["id"].tolist() == ["e1", "e3"]


class RecordingTrainer:
    """Stands in for train_and_predict: records each fold's training and scored rows, checks the loss on them."""

    def __init__(self):
        self.calls = []

    def __call__(self, model_cfg, train_cfg, predict_cfg, render_cfg, train_df, valid_df, out_dir, *, seed, workdir,
                 loss_fn=None, also_predict=None, tokenizer_texts=None, init_seed=None):
        self.calls.append({"train": train_df.copy(), "valid": valid_df.copy(), "loss_fn": loss_fn})
        if loss_fn is not None and "teacher_logits" in train_df.columns:
            labels = torch.tensor(train_df["label"].astype("float").fillna(-100).astype(int).to_numpy())
            batch = {"labels": labels, "teacher_logits": torch.tensor(np.stack(train_df["teacher_logits"].to_list()))}
            loss, _ = loss_fn(torch.zeros(len(train_df), 3), batch)
            assert torch.isfinite(loss)
        lg = fake_logits(valid_df["id"], "student")
        extra = None if also_predict is None else {k: fake_logits(also_predict["id"], "x") for k in ("orig", "swap",
                                                                                                     "avg")}
        return {"orig": lg, "swap": lg, "avg": lg}, {"adapter_dir": str(out_dir), "train_metrics": {}}, extra


@pytest.fixture
def recorder(monkeypatch):
    return patch_train_and_predict(monkeypatch, RecordingTrainer(), trun, srun)


def _cfg(tmp_path, *sets):
    pairs = tmp_path / "pairs.csv"
    if not pairs.is_file():
        train, test = read_pairs(SAMPLE / "train.csv"), read_pairs(SAMPLE / "test.csv")
        write_pairs(generate_pairs([train], [], [test], seed=0, max_pairs=300), pairs)
    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"workdir={tmp_path / 'work'}", "data.max_rows=120", "student.final=none", "teachers.predict_extra=true",
        f"data.extra=[{pairs},{SAMPLE / 'test.csv'}]", *sets])


def test_fold_students_train_on_extra_rows_of_other_questions_only_and_never_score_them(tmp_path, recorder):
    cfg = _cfg(tmp_path, "student.extra_pairs.enabled=true")
    trun.run_teachers(cfg)
    recorder.calls.clear()
    summary = srun.run_distill(cfg)
    assert len(recorder.calls) == 2 and "extra_pairs" in summary["hashes"]
    test_groups = set(prompt_groups(read_pairs(SAMPLE / "test.csv")).tolist())
    used = 0
    for k, call in enumerate(recorder.calls):
        train, valid = call["train"], call["valid"]
        unlabelled = train[train["label"].isna()]
        used += len(unlabelled)
        assert len(unlabelled) and unlabelled["id"].str.startswith("unl-").all()  # only generated pairs, no test row
        assert not set(prompt_groups(unlabelled).tolist()) & set(prompt_groups(valid).tolist())  # not fold k's
        assert not set(prompt_groups(unlabelled).tolist()) & test_groups
        assert valid["label"].notna().all() and not valid["id"].str.startswith("unl-").any()  # never scored
        assert call["loss_fn"].takes_unlabelled_rows
    oof, _ = read_keyed_table(tmp_path / "work" / "student" / "oof.parquet")
    assert len(oof) == 120 and not oof["id"].str.startswith("unl-").any()
    assert used > 0


def test_extra_pairs_change_the_fold_hashes_only_when_enabled(tmp_path, recorder):
    cfg = _cfg(tmp_path)
    trun.run_teachers(cfg)
    plain = srun.run_distill(cfg)
    assert "extra_pairs" not in plain["hashes"]  # runs made before extra pairs keep their hashes
    assert srun.student_config_hash(cfg) == srun.student_config_hash(_cfg(tmp_path, "student.extra_pairs.weight=2"))
    with pytest.raises(UserError, match="config hash differs"):  # fold files of the plain run are not reused
        srun.run_distill(_cfg(tmp_path, "student.extra_pairs.enabled=true", "student.distill.mix=winners"))


def test_hard_label_twin_uses_no_extra_pairs_and_no_soft_term(tmp_path):
    cfg = _cfg(tmp_path, "student.extra_pairs.enabled=true", "student.distill.mix=winners",
               "student.distill.per_teacher=true")
    hard = hard_student_config(cfg)
    assert not hard.student.extra_pairs.enabled and not hard.student.distill.uses_teachers
    assert cfg.student.distill.uses_teachers


def test_distill_config_refuses_what_the_losses_cannot_do(tmp_path):
    with pytest.raises(UserError, match="temperature"):
        _cfg(tmp_path, "student.distill.mix=winners", "student.distill.temperature=2")
    with pytest.raises(UserError, match="teacher_weights"):
        _cfg(tmp_path, "student.distill.per_teacher_weights=fixed")
    cfg = _cfg(tmp_path, "student.distill.per_teacher=true", "student.distill.per_teacher_weights=fixed",
               "student.distill.teacher_weights={tiny-gemma2: 3, tiny-llama: 1}")
    soft = type("S", (), {"teacher_names": ["tiny-gemma2", "tiny-llama"], "path": "x"})()
    assert srun._teacher_weights(cfg.student.distill, soft) == [3.0, 1.0]
    soft.teacher_names = ["tiny-gemma2", "other"]
    with pytest.raises(UserError, match="no weight for teacher 'other'"):
        srun._teacher_weights(cfg.student.distill, soft)
