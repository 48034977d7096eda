"""student/: soft-label join, k-fold OOF, resume, alpha=0 ablation, export save/reload (full precision and 8/4-bit)."""

import copy
import json
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
from arena_kd.kfold.runner import FAULT_ENV, InjectedFault

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _cfg(tmp_path, *sets):
    return load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "data.max_rows=24", "student.final=none", *sets])




class FakeTrainer:
    """Stands in for train_and_predict; checks what the student stage hands to the trainer."""

    def __init__(self):
        self.calls = []

    def __call__(self, model_cfg, train_cfg, predict_cfg, render_cfg, train_df, valid_df, out_dir, *, seed, workdir,
                 loss_fn=None, also_predict=None, tokenizer_texts=None, init_seed=None):
        self.init_seeds = getattr(self, "init_seeds", []) + [init_seed]  # every fold must start from one initialisation
        tl = train_df["teacher_logits"].iloc[0] if "teacher_logits" in train_df.columns else None
        self.calls.append({"rows": len(train_df), "teacher_shape": None if tl is None else np.asarray(tl).shape,
                           "loss_fn": loss_fn})
        if loss_fn is not None:  # the loss the student trains with works on a batch built from the frame
            labels = torch.tensor(train_df["label"].astype(int).to_numpy()[:4])
            batch = {"labels": labels}
            if tl is not None:
                batch["teacher_logits"] = torch.tensor(np.stack(train_df["teacher_logits"].iloc[:4].to_list()))
            loss, terms = loss_fn(torch.zeros(4, 3), batch)
            assert torch.isfinite(loss) and set(terms) == {"ce", "kl"}
        lg = fake_logits(valid_df["id"], model_cfg.random_init["model_type"])
        extra = None
        if also_predict is not None:
            extra = {k: fake_logits(also_predict["id"], "x") for k in ("orig", "swap", "avg")}
        meta = {"adapter_dir": str(out_dir), "train_metrics": {}}
        return {"orig": lg + 0.1, "swap": lg - 0.1, "avg": lg}, meta, extra


@pytest.fixture
def fake(monkeypatch):
    return patch_train_and_predict(monkeypatch, FakeTrainer(), trun, srun)


def test_oof_with_soft_labels_and_comparison(tmp_path, fake, capsys):
    cfg = _cfg(tmp_path)
    trun.run_teachers(cfg)
    fake.calls.clear()
    fake.init_seeds = []
    srun.run_distill(cfg)
    assert len(fake.calls) == 2 and all(c["teacher_shape"] == (3,) for c in fake.calls)
    assert fake.init_seeds == [cfg.seed] * 2  # every fold student starts from one initialisation
    oof, meta = read_keyed_table(tmp_path / "work" / "student" / "oof.parquet")
    assert list(oof.columns) == srun.OOF_COLUMNS and len(oof) == 24 and oof["id"].is_unique
    assert meta["overall"]["teacher_ensemble"]["rows"] == 24 and set(meta["per_fold"]) == {"0", "1"}
    assert meta["hashes"]["soft_labels"] != "unused"
    out = capsys.readouterr().out
    assert "student OOF log loss" in out and "teacher ensemble" in out
    assert (tmp_path / "work" / "student" / "config.resolved.yaml").is_file()


def test_per_teacher_soft_labels_are_k_by_3(tmp_path, fake):
    cfg = _cfg(tmp_path, "student.distill.per_teacher=true", "student.distill.per_teacher_weights=combine")
    trun.run_teachers(cfg)
    fake.calls.clear()
    srun.run_distill(cfg)
    assert fake.calls[0]["teacher_shape"] == (2, 3)


def test_alpha_zero_needs_no_soft_labels(tmp_path, fake):
    cfg = _cfg(tmp_path, "student.distill.alpha=0")
    summary = srun.run_distill(cfg)  # teachers never ran
    assert summary["hashes"]["soft_labels"] == "unused"
    assert all(c["teacher_shape"] is None for c in fake.calls)
    oof, meta = read_keyed_table(tmp_path / "work" / "student" / "oof.parquet")
    assert len(oof) == 24 and meta["overall"]["teacher_ensemble"] is None


def test_soft_label_coverage_error(tmp_path, fake):
    cfg = _cfg(tmp_path)
    trun.run_teachers(cfg)
    path = tmp_path / "work" / "teachers" / "soft_labels.parquet"
    soft, meta = read_keyed_table(path)
    partial = tmp_path / "partial.parquet"
    soft.iloc[2:].to_parquet(partial)
    with pytest.raises(UserError, match=r"partial.parquet: 2 of 24 training ids have no teacher logits \(e\.g\. "):
        srun.run_distill(_cfg(tmp_path, f"student.distill.soft_labels={partial}"))
    with pytest.raises(UserError, match="soft labels not found"):
        srun.run_distill(_cfg(tmp_path, f"student.distill.soft_labels={tmp_path / 'nope.parquet'}"))


def test_student_resume_and_soft_label_change_refused(tmp_path, fake, monkeypatch):
    cfg = _cfg(tmp_path)
    trun.run_teachers(cfg)
    monkeypatch.setenv(FAULT_ENV, "1")
    fake.calls.clear()
    with pytest.raises(InjectedFault):
        srun.run_distill(cfg)
    monkeypatch.delenv(FAULT_ENV)
    fake.calls.clear()
    srun.run_distill(cfg)
    assert len(fake.calls) == 1  # fold 0 came from the interrupted run
    # new soft labels (other combine temperature) → the student's folds no longer match
    trun.run_teachers(_cfg(tmp_path, "teachers.combine.temperature=2.0"))
    with pytest.raises(UserError, match=r"soft_labels hash differs.*--force"):
        srun.run_distill(cfg)


# --------------------------------------------------------------------------- export save / reload


def _tiny_tokenizer(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = ["which answer is better? " * 3, "the quick brown fox jumps over the lazy dog", "A: yes. B: no."] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   padding_side="left")


def _tiny_classifier(vocab):
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    torch.manual_seed(0)
    c = Gemma2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_labels=3, pad_token_id=0,
                     attn_implementation="eager")
    return Gemma2ForSequenceClassification(c).eval()


def _logits(model, tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        inputs = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        return model(**inputs).logits.float().cpu()


TEXTS = ["which answer is better? A: yes. B: no.", "the quick brown fox", "A: yes. B: the lazy dog jumps over the fox"]


@pytest.fixture
def merged_export(tmp_path):
    from arena_kd.llm.export import save_export

    cfg = load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "student.export_dtype=fp32",
                              "student.predict.max_length=80"])
    tok = _tiny_tokenizer(tmp_path)
    model = _tiny_classifier(len(tok))
    ref = _logits(model, tok, TEXTS)
    load = {"attn_implementation": "eager", "disable_softcapping": False, "padding_side": "left", "pad_token_id": 0,
            "num_labels": 3}
    ids = [tok(t)["input_ids"] for t in TEXTS]
    reference = pd.DataFrame({"id": ["r0", "r1", "r2"], "input_ids": ids})
    for j, c in enumerate(("logit_a", "logit_b", "logit_tie")):
        reference[c] = [_logits(model, tok, [t])[0, j].item() for t in TEXTS]
    out = save_export(tmp_path / "export", cfg, merged_model=model, tokenizer=tok, settings_load=load,
                      hashes={"x": "1"}, reference=reference)
    return out, ref


def test_export_reload_full_precision_matches(merged_export):
    from arena_kd.llm.export import load_export, verify_export

    out, ref = merged_export
    model, tok, settings = load_export(out, quantization="none", dtype="fp32", device="cpu")
    assert settings["render"] == {"max_length": 80, "truncation": "budget", "prompt_fraction": 0.2,
                                  "template": "blocks"}
    assert tok.padding_side == "left" and settings["load"]["attn_implementation"] == "eager"
    assert (out / "config.resolved.yaml").is_file() and (out / "model" / "model.safetensors").is_file()
    assert torch.allclose(_logits(model, tok, TEXTS), ref, atol=1e-5)  # stated tolerance: 1e-5 (fp32 round trip)
    check = verify_export(out, model=model)
    assert check["rows"] == 3 and check["max_abs_logit_diff"] < 1e-5


@pytest.mark.parametrize("quant,tol", [("8bit", 0.02), ("4bit", 0.1)])
def test_export_reload_quantized_close(merged_export, quant, tol):
    from arena_kd.llm.export import load_export, verify_export

    out, ref = merged_export
    model, tok, _ = load_export(out, quantization=quant, dtype="fp32", device="cpu")
    got = _logits(model, tok, TEXTS)
    # stated tolerance on probabilities (tiny random Gemma2, hidden 64): measured ~0.002 (8-bit), ~0.03 (4-bit)
    assert (got.softmax(-1) - ref.softmax(-1)).abs().max().item() < tol
    assert verify_export(out, model=model)["max_abs_prob_diff"] < tol


def test_unmerged_export_base_plus_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    from arena_kd.llm.export import load_export, save_export

    cfg = load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "student.export_dtype=fp32",
                              "student.export_merged=false"])
    tok = _tiny_tokenizer(tmp_path)
    base = _tiny_classifier(len(tok))
    clean_base = copy.deepcopy(base)  # get_peft_model injects LoRA layers into `base` in place
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type="SEQ_CLS", init_lora_weights=False))
    ref = _logits(peft_model, tok, TEXTS)
    peft_model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="LoRA layers"):
        save_export(tmp_path / "bad", cfg, base_model=peft_model.get_base_model(), adapter_dir=tmp_path / "adapter",
                    tokenizer=tok, settings_load={}, hashes={})
    out = save_export(tmp_path / "export", cfg, base_model=clean_base, adapter_dir=tmp_path / "adapter", tokenizer=tok,
                      settings_load={"attn_implementation": "eager", "padding_side": "left"}, hashes={})
    model, tok2, settings = load_export(out, dtype="fp32", device="cpu")
    assert settings["merged"] is False and (out / "adapter").is_dir()
    assert torch.allclose(_logits(model, tok2, TEXTS), ref, atol=1e-5)


def test_load_export_errors(tmp_path):
    from arena_kd.llm.export import load_export

    with pytest.raises(UserError, match="export.json missing"):
        load_export(tmp_path)


def test_soft_labels_tempered_elsewhere_and_kd_temperature_are_refused(tmp_path, fake):
    """One temperature owner: soft labels written at combine T=2 cannot be distilled at T=2 (T^2 in effect), in one
    line."""
    trun.run_teachers(_cfg(tmp_path, "teachers.combine.temperature=2"))
    n_teacher_calls = len(fake.calls)
    with pytest.raises(UserError, match=r"already tempered at T=2 .* would compound") as e:
        srun.run_distill(_cfg(tmp_path, "student.distill.temperature=2"))
    assert "\n" not in str(e.value) and len(fake.calls) == n_teacher_calls  # refused before any student training
    srun.run_distill(_cfg(tmp_path, "student.distill.temperature=1"))  # the soft labels own the temperature: fine


# --------------------------------------------------------------------------- real llm/ engine (tiny models)


def test_real_teachers_distill_export_roundtrip(tmp_path_factory):
    """teachers → distill (alpha 0.5, final=full) → export; the export reloads to the trained model's logits."""
    from arena_kd.llm.export import load_export, verify_export
    from arena_kd.llm.predict import predict_logits

    # same workdir as test_teachers' real smoke test: whichever runs second reuses the teachers' folds
    work = tmp_path_factory.getbasetemp() / "shared-smoke" / "work"
    cfg = load_config(SMOKE, [f"workdir={work}", "data.max_rows=24", "student.reference_rows=6"])
    trun.run_teachers(cfg)
    summary = srun.run_distill(cfg)
    oof, meta = read_keyed_table(work / "student" / "oof.parquet")
    assert len(oof) == 24 and np.isfinite(oof[["logit_a", "swap_logit_tie"]].to_numpy()).all()
    export = Path(summary["export_dir"])
    assert (export / "export.json").is_file() and (export / "tokenizer").is_dir()
    model, tok, settings = load_export(export, quantization="none", dtype="fp32", device="cpu")
    # stated tolerance: 1e-4 on logits, fp32 export reloaded in fp32
    assert verify_export(export, model=model)["max_abs_logit_diff"] < 1e-4
    ref, _ = read_keyed_table(export / "reference_logits.parquet")
    from arena_kd.kfold.training_data import load_training_data

    frame = load_training_data(cfg).frame.set_index("id").loc[ref["id"]].reset_index()
    r = settings["render"]
    got = predict_logits(model, tok, frame, max_length=r["max_length"], truncation=r["truncation"],
                         prompt_fraction=r["prompt_fraction"], template=r["template"], tokens_per_batch=1024,
                         max_batch_size=4, progress=False)
    from scipy.special import log_softmax

    # stored: log-probabilities
    assert np.abs(log_softmax(got, axis=1) - ref[["logit_a", "logit_b", "logit_tie"]].to_numpy()).max() < 1e-4
    # stated tolerance for 8-bit reload: probabilities within 0.05 (tiny random models)
    assert verify_export(export, quantization="8bit", dtype="fp32", device="cpu")["max_abs_prob_diff"] < 0.05
    # measured on this smoke export: 8-bit ~0.001, 4-bit ~0.02 max abs probability difference
    assert verify_export(export, quantization="4bit", dtype="fp32", device="cpu")["max_abs_prob_diff"] < 0.1


def test_real_alpha_zero_fold_soup(tmp_path):
    """The hard-label-only ablation with the same command, final = exact soup of the fold adapters, checked against
    the fold mean."""
    from arena_kd.llm.export import SOUP_TOLERANCE, TOLERANCE_FP32, verify_export

    cfg = load_config(SMOKE, [f"workdir={tmp_path / 'work'}", "data.max_rows=24", "student.distill.alpha=0",
                              "student.final=fold_soup", "student.reference_rows=4"])
    summary = srun.run_distill(cfg)
    assert summary["hashes"]["soft_labels"] == "unused"
    assert (tmp_path / "work" / "student" / "final" / "final.json").is_file()
    export = Path(summary["export_dir"])
    settings = json.loads((export / "export.json").read_text())
    # the reference is the mean of the fold models (never the soup itself); the soup's distance from it is recorded
    assert settings["reference"].startswith("mean of the fold models") and settings["soup_mode"] == "exact"
    soup = settings["soup"]
    assert soup["folds"] == 2 and soup["rows"] == 4 and set(soup) >= {"exact", "average", "single_fold"}
    check = verify_export(export, dtype="fp32", device="cpu")
    assert check["ok"] and check["tolerance"] == pytest.approx(TOLERANCE_FP32 + SOUP_TOLERANCE)
    assert check["max_abs_prob_diff"] == pytest.approx(soup["exact"]["max_abs_prob_diff"], abs=1e-4)
    assert settings["verify"]["none"]["ok"]
    # the merged export is the soup adapter on its trained base (fp32 merge): same logits
    from arena_kd.common.io import read_keyed_table as rkt
    from arena_kd.llm.export import load_export, reference_logits
    from arena_kd.student.soup import adapter_logits

    ref, _ = rkt(export / "reference_logits.parquet")
    ids = [list(r) for r in ref["input_ids"]]
    want = adapter_logits(cfg.student.model, tmp_path / "work" / "student" / "final" / "adapter", ids, cfg.workdir)
    model, _, _ = load_export(export, dtype="fp32", device="cpu")
    assert np.abs(reference_logits(model, ids) - want).max() < 1e-4
