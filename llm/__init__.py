"""llm/: any HF backbone as a 3-class preference classifier (shared by teachers, student and submission).

Modules (one job each):
  loading          load_classifier: the pieces below put together in order (dtype, tokenizer, weights, config,
                   placement, head, k-bit preparation, LoRA or adapter) and the `info` that reloads it identically
  tokenizer        tokenizer (folder / hub id / pkg:// / GGUF / trained and cached BPE), pad token, right padding
  devices          device, dtype (native bf16 or not) and bitsandbytes 8/4-bit rules
  backbone_config  the HF config as a 3-class classifier's: Gemma2 attention + softcapping, layer pruning, pooling
  head             the classification head: its size, class names, seeded re-initialisation
  answer_pooling   the head also reads mean(h[A]) − mean(h[B]) (model.answer_pooling): a body hook, the spans per batch
  random_backbone  seeded random backbones from `random_init`, built once under the workdir
  gguf             GGUF checkpoints dequantised once into a plain folder
  cache            folders built once under the workdir, published with one rename
  placement        where the weights live (single / FSDP / device_map auto), launch state, freeing accelerator memory
  lora             peft LoRA: attach, save/load (safetensors), merge_and_unload, fold-soup averaging
  batching         token-budgeted length-sorted batches, dynamic padding with position ids
  train            train_classifier: the entry point every model stage calls; settings hash, resume, outputs
  trainer          the HF Trainer subclass: loss over the accumulated step, seeded length-grouped sampler, logs
  pair_data        training rows as batches: rendering, labels, teacher logits, A/B swap augmentation
  losses           the default hard-label CE and loss_key (a loss's resume identity)
  predict          logits in input order, A/B-swap TTA, data-parallel over processes
  export           the student export format: save, load, verify against reference rows
  export_members   which folders an export is made of (one model, or a fold ensemble's members), read without torch
"""
