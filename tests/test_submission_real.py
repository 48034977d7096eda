"""submission/ with a real (tiny, random) exported student: load_export → StudentBackend → llm.predict, on CPU.

The stacker is still a fake here (tests/test_submission.py's FakeStacker); the lead's integration test runs
the real smoke pipeline end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_kd.common.config import load_config
from arena_kd.common.keys import LABELS

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 12


def _tiny_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400,
                                                       special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A random 2-layer Gemma2 classifier exported with arena_kd.llm.export.save_export (the real format)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForSequenceClassification

    from arena_kd.llm.export import save_export

    tmp = tmp_path_factory.mktemp("real")
    test = pd.read_csv(ROOT / "data/sample/test.csv", dtype={"id": str}).head(N_ROWS)
    (tmp / "input").mkdir()
    test.to_csv(tmp / "input" / "test.csv", index=False)
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"workdir={tmp / 'work'}",
                                                    f"data.test={tmp / 'input' / 'test.csv'}",
                                                    "data.sample_submission=null",
                                                    f"data.train={ROOT / 'data/sample/train.csv'}"])
    tok = _tiny_tokenizer(test["prompt"].tolist() + test["response_a"].tolist() + test["response_b"].tolist())
    torch.manual_seed(0)
    mcfg = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_labels=3,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        attn_implementation="eager")
    model = Gemma2ForSequenceClassification(mcfg).eval()
    # reference rows as the export stage stores them: an export that cannot be verified is not used (issue 22)
    from arena_kd.common.metrics import softmax
    from arena_kd.data.readers import read_pairs
    from arena_kd.data.render import render_batch
    from arena_kd.llm.export import reference_logits, render_settings
    from arena_kd.student.soup import reference_table

    rs = render_settings(cfg)
    ref_rows = read_pairs(tmp / "input" / "test.csv").head(4)
    ids = render_batch(ref_rows, tok, rs["max_length"], rs["truncation"], rs["prompt_fraction"],
                       template=rs["template"])
    reference = reference_table(ref_rows["id"], ids, softmax(reference_logits(model, ids).astype(np.float64)))
    export_dir = save_export(cfg.workdir_path / "student" / "export", cfg, merged_model=model, tokenizer=tok,
                             settings_load={"attn_implementation": "eager", "padding_side": "left",
                                            "pad_token_id": tok.pad_token_id},
                             hashes={}, extra={"reference_rows": len(reference)}, reference=reference)
    return cfg, export_dir, test


def test_load_student_from_a_real_export(export):
    from arena_kd.data.render import render_batch
    from arena_kd.submission.student_infer import load_student

    cfg, export_dir, test = export
    # bitsandbytes 8-bit, on CPU too
    backend = load_student(export_dir, quantization="8bit", dtype="auto", devices=["cpu"])
    assert backend.n_devices == 1
    assert backend.render["max_length"] == (cfg.student.predict.max_length or cfg.render.max_length)
    from arena_kd.data.readers import read_pairs

    df = read_pairs(export[0].data.test)
    lens = backend.lengths(df, 64)
    ref = [len(x) for x in render_batch(df, backend.tokenizer, 64, truncation=backend.render["truncation"],
                                        prompt_fraction=backend.render["prompt_fraction"])]
    assert lens.tolist() == ref and lens.max() <= 64


def test_submission_with_real_student_is_symmetric(export, tmp_path, monkeypatch):
    pytest.importorskip("arena_kd.llm.predict", reason="llm/predict.py (issue 3) not there yet")
    from test_submission import FakeStacker  # tests/ is on sys.path (pytest prepend import mode)

    from arena_kd.submission import run as run_mod

    cfg, export_dir, test = export
    monkeypatch.setattr(run_mod, "load_stacker_or_none", lambda d, e=None: FakeStacker())
    out = tmp_path / "a" / "submission.csv"
    res = run_mod.run_submission(cfg, out=str(out), progress=False)
    assert res.counts == {"stacker+tta": N_ROWS}
    swapped = test.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    (tmp_path / "b").mkdir()
    swapped.to_csv(tmp_path / "b" / "test.csv", index=False)
    run_mod.run_submission(cfg, test=str(tmp_path / "b" / "test.csv"), out=str(tmp_path / "b" / "submission.csv"),
                           progress=False)
    a = pd.read_csv(out, dtype={"id": str}).set_index("id")
    b = pd.read_csv(tmp_path / "b" / "submission.csv", dtype={"id": str}).set_index("id").loc[a.index]
    assert np.abs(a[LABELS[0]].to_numpy() - b[LABELS[1]].to_numpy()).mean() < 0.02
    assert np.abs(a[LABELS[2]].to_numpy() - b[LABELS[2]].to_numpy()).mean() < 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_submission_on_every_visible_gpu_in_8bit(export, tmp_path, monkeypatch):
    """One 8-bit copy per visible GPU; same answers as the CPU fp32 run within quantization noise."""
    import torch

    pytest.importorskip("arena_kd.llm.predict")
    from test_submission import FakeStacker

    from arena_kd.submission import run as run_mod
    from arena_kd.submission.student_infer import load_student

    cfg, export_dir, test = export
    backend = load_student(export_dir, quantization="8bit", dtype="fp16")
    assert [r.device for r in backend.replicas] == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    monkeypatch.setattr(run_mod, "load_stacker_or_none", lambda d, e=None: FakeStacker())
    cfg8 = cfg.model_copy(deep=True)
    cfg8.submission.quantization, cfg8.submission.dtype = "8bit", "fp16"
    gpu = run_mod.run_submission(cfg8, out=str(tmp_path / "gpu.csv"), progress=False)
    cpu = run_mod.run_submission(cfg, out=str(tmp_path / "cpu.csv"), progress=False, devices=["cpu"])
    assert gpu.counts == cpu.counts == {"stacker+tta": N_ROWS}
    a = pd.read_csv(tmp_path / "gpu.csv")[list(LABELS)].to_numpy()
    b = pd.read_csv(tmp_path / "cpu.csv")[list(LABELS)].to_numpy()
    assert np.abs(a - b).max() < 0.05
