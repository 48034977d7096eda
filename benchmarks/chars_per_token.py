"""Measure characters per token of the rendered fields on a real tokenizer (the planner's fallback ratio).

    pip install llama-models tiktoken        # the Llama-3 tokenizer ships in llama-models (tiktoken BPE file)
    .venv/bin/python benchmarks/chars_per_token.py [FILES...] [--tokenizer-model PATH]

The planner (planner/plan.py) counts tokens with the student's own tokenizer when one is on disk; when it is
not (a hub id on a machine without the weights), it divides characters by the ratio measured here and says so.
Default files: the embedded sample and the shared real data. The Llama-3 tokenizer (128k vocabulary) is a proxy
for Gemma-2's (256k vocabulary, not in any PyPI package found): the planner widens its range for that. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# tiktoken split pattern of the Llama-3 tokenizer (llama_models/llama3/tokenizer.py, pat_str)
LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
DEFAULT_FILES = [ROOT / "data/sample/train.csv", ROOT / "data/sample/test.csv",
                 Path("/work/shared/data/mtbench_human.csv"), Path("/work/shared/data/hh_harmless.csv")]


def llama3_encoder(model_file: Path | None):
    import tiktoken

    if model_file is None:
        spec = importlib.util.find_spec("llama_models")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("llama-models is not installed (pip install llama-models tiktoken) "
                             "and no --tokenizer-model given")
        model_file = Path(list(spec.submodule_search_locations)[0]) / "llama3" / "tokenizer.model"
    ranks = {}
    for line in model_file.read_text().splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding(name="llama3", pat_str=LLAMA3_PAT, mergeable_ranks=ranks, special_tokens={}), model_file


def fields(path: Path) -> list[str]:
    """The three fields of every row exactly as the planner measures them (planner/lengths.py, the
    renderer's turn joining)."""
    sys.path.insert(0, str(ROOT))
    from arena_kd.data.readers import read_pairs
    from arena_kd.planner.lengths import _fields

    return _fields(read_pairs(path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--tokenizer-model", type=Path, default=None)
    a = ap.parse_args()
    enc, model_file = llama3_encoder(a.tokenizer_model)
    print(f"tokenizer: Llama-3 (tiktoken BPE, {enc.n_vocab:,} ranks) from {model_file}")
    tot_c = tot_t = 0
    for f in a.files or DEFAULT_FILES:
        if not f.is_file():
            print(f"  {f}: missing, skipped")
            continue
        texts = fields(f)
        c = sum(len(t) for t in texts)
        t = sum(len(x) for x in enc.encode_ordinary_batch(texts))
        tot_c, tot_t = tot_c + c, tot_t + t
        print(f"  {f}: {len(texts) // 3} rows, {c:,} chars, {t:,} tokens, {c / t:.3f} chars/token")
    if tot_t:
        print(f"all: {tot_c:,} chars / {tot_t:,} tokens = {tot_c / tot_t:.3f} chars/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
