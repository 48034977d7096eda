"""lora.top_layers: adapters only in the last N layers (cheap CPU training for the demo)."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig

from arena_kd.common.config_model import LoraConfig
from arena_kd.common.errors import UserError
from arena_kd.llm.lora import apply_lora


def _model(layers=4):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=3, pad_token_id=0)
    return AutoModelForSequenceClassification.from_config(cfg)


def _trainable_layers(model):
    return sorted({int(n.split(".layers.")[1].split(".")[0]) for n, p in model.named_parameters()
                   if p.requires_grad and ".layers." in n})


def test_top_layers_limits_adapters_and_keeps_the_head():
    m = apply_lora(_model(), LoraConfig(r=4, alpha=8, top_layers=1))
    assert _trainable_layers(m) == [3]
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert any("score" in n for n in names)
    assert any("mlp.down_proj.lora_A" in n for n in names) and any("self_attn.q_proj.lora_B" in n for n in names)


def test_all_layers_by_default():
    m = apply_lora(_model(), LoraConfig(r=4, alpha=8))
    assert _trainable_layers(m) == [0, 1, 2, 3]


def test_top_layers_stops_backward_below_the_adapted_layers():
    m = apply_lora(_model(), LoraConfig(r=4, alpha=8, top_layers=2))
    needs_grad = {}
    layers = m.base_model.model.model.layers
    def record(i):
        def hook(mod, inp, out):
            needs_grad[i] = (out[0] if isinstance(out, tuple) else out).requires_grad
        return hook

    for i, layer in enumerate(layers):
        layer.register_forward_hook(record(i))
    out = m(input_ids=torch.randint(1, 100, (2, 8)), labels=torch.tensor([0, 2]))
    out.loss.backward()
    # layers 0-1 have no trainable parameters and no grad-requiring input: autograd never walks through them
    assert needs_grad == {0: False, 1: False, 2: True, 3: True}


def test_top_layers_more_than_the_model_has_means_all():
    m = apply_lora(_model(3), LoraConfig(r=4, alpha=8, top_layers=10))
    assert _trainable_layers(m) == [0, 1, 2]


def test_num_layers_prunes_a_pretrained_backbone(tmp_path):
    """model.num_layers keeps the first N layers of a saved backbone, with the same weights as the full model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from arena_kd.common.config_model import ModelConfig
    from arena_kd.llm.loading import load_classifier

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    full = _model(4)
    full.save_pretrained(tmp_path / "m")
    fast.save_pretrained(tmp_path / "m")
    cfg = ModelConfig(backbone=str(tmp_path / "m"), num_layers=2, lora={"enabled": False}, gradient_checkpointing=False)
    pruned, _, _ = load_classifier(cfg, training=False, workdir=tmp_path / "w")
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    torch.testing.assert_close(pruned.model.layers[1].mlp.up_proj.weight, full.model.layers[1].mlp.up_proj.weight)
    with pytest.raises(UserError, match="only 4 layers"):
        load_classifier(ModelConfig(backbone=str(tmp_path / "m"), num_layers=9), training=False, workdir=tmp_path / "w")
