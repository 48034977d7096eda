"""llm/: any HF backbone as a 3-class preference classifier (shared by teachers, student and submission).

Modules (one job each):
  loading   tokenizer (folder / hub id / pkg:// / GGUF / trained BPE) and classifier loading: dtype,
            bitsandbytes 8/4-bit, Gemma2 attention + softcapping, pad token, head init, LoRA or adapter; `info`
  lora      peft LoRA: attach, save/load (safetensors), merge_and_unload, fold-soup averaging
  batching  token-budgeted length-sorted batches, dynamic padding with position ids
  train     HF Trainer subclass with a pluggable loss_fn(logits, batch), swap augmentation, resume
  predict   logits in input order, A/B-swap TTA, data-parallel over processes
"""
