"""LoRA through peft: attach, save/load (safetensors), merge, and average fold adapters (fold soup)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch

from arena_kd.common.config_model import LoraConfig as LoraSettings
from arena_kd.common.errors import UserError
from arena_kd.llm.cache import temporary_sibling

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_CARRIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                  "llm_info.json")


def apply_lora(model, settings: LoraSettings, autocast_adapter_dtype: bool = True):
    """Wrap ``model`` with fresh LoRA adapters (task SEQ_CLS: the score/classifier head is trained and saved in full).

    ``autocast_adapter_dtype=False`` keeps the adapters in the base's dtype instead of fp32 (sharded QLoRA: FSDP
    needs one dtype per flattened group; see llm.placement).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=_target_modules(model, settings),
        layers_to_transform=_top_layers(model, settings.top_layers),
    )
    try:
        return get_peft_model(model, cfg, autocast_adapter_dtype=autocast_adapter_dtype)
    except ValueError as exc:
        raise UserError(f"model.lora.target_modules={settings.target_modules!r}: {str(exc).splitlines()[0]}") from None


def _target_modules(model, settings: LoraSettings):
    """peft refuses 'all-linear' together with layers_to_transform: spell out the layers' linear projections then."""
    if settings.top_layers is None or settings.target_modules != "all-linear":
        return settings.target_modules
    names = {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}"
    }
    if not names:
        raise UserError("model.lora.top_layers: found no linear projections inside '<...>.layers.<i>' modules")
    return sorted(names)


def _top_layers(model, n: int | None) -> list[int] | None:
    """Indices of the last ``n`` transformer layers (peft ``layers_to_transform``), or None for all."""
    if n is None:
        return None
    total = getattr(model.config, "num_hidden_layers", None)
    if not total:
        raise UserError(f"model.lora.top_layers={n}: the backbone config has no num_hidden_layers")
    return list(range(max(0, total - n), total))


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights are counted at their logical size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        t, a = model.get_nb_trainable_parameters()
        return int(t), int(a)
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def _swap_into(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` onto ``out`` (replacing an older one)."""
    if out.exists():
        old = out.with_name(out.name + f".old{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def save_adapter(model, out_dir: str | Path, tokenizer=None, info: dict | None = None,
                 state_dict: dict | None = None) -> Path:
    """Save the LoRA adapter (or the full model when there is no adapter) as safetensors, atomically.

    The tokenizer and ``info`` (llm_info.json) go into the same folder so it reloads on its own. ``state_dict``:
    weights gathered from a sharded model (FSDP), saved instead of the model's own (local shards) tensors.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    if state_dict is not None:
        model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
    else:
        model.save_pretrained(str(tmp), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    if info is not None:
        (tmp / "llm_info.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    _swap_into(tmp, out)
    return out


def load_adapter(base_model, adapter_dir: str | Path, trainable: bool = False):
    """Load a saved LoRA adapter onto ``base_model`` (quantized or not)."""
    from peft import PeftModel

    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).is_file():
        raise UserError(f"{d}: no {ADAPTER_CONFIG} (not a LoRA adapter folder)")
    return PeftModel.from_pretrained(base_model, str(d), is_trainable=trainable)


def merge_and_unload(model):
    """Fold the LoRA weights into the base and return the plain HF model (no-op for models without adapters).

    Merging into a 4-bit/8-bit base rounds the merged weights to the quantized grid; merge into an
    unquantized base (reload with quantization='none') for an exact export.
    """
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def _read_adapter(d: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    if not (d / ADAPTER_CONFIG).is_file() or not (d / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{d}: not a saved LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS} expected)")
    return json.loads((d / ADAPTER_CONFIG).read_text()), load_file(str(d / ADAPTER_WEIGHTS))


_SHAPE_KEYS = ("r", "lora_alpha", "target_modules", "modules_to_save", "task_type", "base_model_name_or_path",
               "use_dora", "use_rslora")


def _read_folds(dirs: list[Path]) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """(config of the first, the tensors of each) after checking the adapters share config keys and tensor
    names/shapes."""
    if not dirs:
        raise UserError("fold soup: no adapter folders given")
    cfg0, w0 = _read_adapter(dirs[0])
    weights = [w0]
    for d in dirs[1:]:
        cfg, w = _read_adapter(d)
        for key in _SHAPE_KEYS:
            if cfg.get(key) != cfg0.get(key) and key != "base_model_name_or_path":
                raise UserError(f"{d}: adapter config '{key}'={cfg.get(key)!r} differs from {dirs[0]} "
                                f"({cfg0.get(key)!r})")
        if set(w) != set(w0):
            raise UserError(f"{d}: adapter tensors differ from {dirs[0]} ({len(set(w) ^ set(w0))} names not shared)")
        for k, v in w.items():
            if v.shape != w0[k].shape:
                raise UserError(f"{d}: tensor {k} has shape {tuple(v.shape)}, {dirs[0]} has {tuple(w0[k].shape)}")
        weights.append(w)
    return cfg0, weights


def _write_soup(dirs: list[Path], out_dir: str | Path, tensors: dict[str, torch.Tensor], cfg: dict,
                record: dict) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for name in _CARRIED_FILES:
        if (dirs[0] / name).is_file():
            shutil.copy2(dirs[0] / name, tmp / name)
    (tmp / "soup.json").write_text(json.dumps({**record, "folds": [str(d) for d in dirs]}, indent=2) + "\n")
    _swap_into(tmp, out)
    return out


def average_adapters(dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Element-wise fold soup: the mean of k adapters' LoRA A, LoRA B and ``modules_to_save`` (score head) weights.

    This averages A and B *separately*: mean(B) @ mean(A) != mean(B @ A), so the merged model is not the mean of the
    fold weight deltas (the 1st place of LMSYS did this with its fold adapters). It stays close only while the folds
    start from one initialisation (``llm.train.train_classifier(init_seed=...)``, which the k-fold stages pass) and
    move little; :func:`concat_adapters` is the exact alternative. All adapters must share their LoRA config and
    tensors. The first adapter's config, tokenizer and llm_info.json are copied alongside. Written atomically.
    """
    dirs = [Path(d) for d in dirs]
    cfg0, weights = _read_folds(dirs)
    mean = {k: (sum(w[k].double() for w in weights) / len(weights)).to(v.dtype).contiguous()
            for k, v in weights[0].items()}
    return _write_soup(dirs, out_dir, mean, cfg0, {"mode": "average"})


def concat_adapters(dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Exact fold soup: k adapters side by side along the rank axis, each B scaled by 1/k.

    For every adapted layer, A' = [A_1; ...; A_k] (rank k*r) and B' = [B_1/k, ..., B_k/k], so
    B' A' = (1/k) sum_i B_i A_i: with the scaling alpha/r kept (lora_alpha multiplied by k, or by sqrt(k) under
    rsLoRA), the merged weight delta is exactly the mean of the fold deltas. The head (``modules_to_save``) is
    linear in its weights and averaged element-wise. Until merged the adapter has rank k*r (k times the LoRA
    compute); the merged export has the base model's size whatever k is. DoRA adapters are refused (their
    magnitude vector does not combine linearly).
    """
    dirs = [Path(d) for d in dirs]
    cfg0, weights = _read_folds(dirs)
    k = len(dirs)
    if cfg0.get("use_dora"):
        raise UserError(f"{dirs[0]}: exact fold soup of DoRA adapters is not defined; use student.soup=average")
    out: dict[str, torch.Tensor] = {}
    for name, v in weights[0].items():
        if ".lora_A." in name or ".lora_embedding_A" in name:
            dim = 0 if ".lora_A." in name else 1
            out[name] = torch.cat([w[name] for w in weights], dim=dim).contiguous()
        elif ".lora_B." in name or ".lora_embedding_B" in name:
            dim = 1 if ".lora_B." in name else 0
            out[name] = torch.cat([(w[name].double() / k).to(v.dtype) for w in weights], dim=dim).contiguous()
        elif "lora_" in name:
            raise UserError(f"{dirs[0]}: tensor {name} cannot be concatenated for an exact soup; "
                            "use student.soup=average")
        else:
            out[name] = (sum(w[name].double() for w in weights) / k).to(v.dtype).contiguous()
    factor = math.sqrt(k) if cfg0.get("use_rslora") else k  # keeps the scaling alpha/r (rsLoRA: alpha/sqrt(r))
    cfg = dict(cfg0)
    cfg["r"] = int(cfg0["r"]) * k
    alpha = cfg0["lora_alpha"] * factor
    cfg["lora_alpha"] = int(alpha) if float(alpha).is_integer() else float(alpha)
    for key, mult in (("rank_pattern", k), ("alpha_pattern", factor)):
        if cfg0.get(key):
            cfg[key] = {m: v * mult for m, v in cfg0[key].items()}
    return _write_soup(dirs, out_dir, out, cfg, {"mode": "exact", "k": k, "rank_per_fold": int(cfg0["r"])})


SOUPS = {"exact": concat_adapters, "average": average_adapters}


def soup_adapters(dirs: list[str | Path], out_dir: str | Path, mode: str = "exact") -> Path:
    """Fold soup by ``mode``: 'exact' (:func:`concat_adapters`) or 'average' (:func:`average_adapters`)."""
    if mode not in SOUPS:
        raise UserError(f"student.soup: unknown mode '{mode}' (exact or average)")
    return SOUPS[mode](dirs, out_dir)
