"""The linear probe's table: benchmarks/results/linear_probe.md from the JSON lines benchmarks/linear_probe.py appends,
and the same section in benchmarks/RESULTS.md between its own markers (benchmarks/run_all.py copies it back)."""

from __future__ import annotations

import json
from pathlib import Path

from arena_kd.common.io import atomic_write_text
from arena_kd.common.metrics import verdict
from benchmarks.learning_curve_report import RESULTS, SOURCES, _diff, _iv, _ranks, replace_section

SECTION_MD = Path(__file__).resolve().parent / "results" / "linear_probe.md"
BEGIN, END = "<!-- linear-probe:begin -->", "<!-- linear-probe:end -->"


def read_log(path: Path) -> list[dict]:
    """The log's records, the last one of each (input, layers, max_length, variant) kept (a rerun replaces a point);
    records written before the cross-encoder inputs are ``separate`` over the full 6-layer backbone."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    for r in recs:
        r.setdefault("input", "separate")
        r.setdefault("layers", 6)
    latest = {_key(r): r for r in recs}
    return sorted(latest.values(), key=_key)


def _key(r: dict) -> tuple:
    return (INPUTS.index(r["input"]) if r["input"] in INPUTS else len(INPUTS), r["input"], r["layers"],
            r["max_length"], VARIANT_ORDER.get(r["variant"], 9))


INPUTS = ("separate", "cross-head", "cross-mean", "cross-segment")
VARIANT_ORDER = {"pooled": 0, "per-source": 1, "routed": 2, "pooled-distilled": 3}


def table(recs: list[dict]) -> str:
    head = ("| input (layers) | tokens | variant | C (2-fold CV) | log loss [95%] | Δ vs prior [95%] | "
            "Δ vs source constants [95%] | HH (const) | MT (const) | Δ vs own mean HH / MT [95%] | router accuracy | "
            "embed + fit s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in recs:
        d, s, per = r["vs_prior"], r["vs_source_constants"], r["per_source"]
        src = [f"{per[k]['logloss']:.4f} ({per[k]['constant']:.4f})" if k in per else "—" for k, _ in SOURCES]
        router = f"{r['router_accuracy']:.0%}" if "router_accuracy" in r else "—"
        lines.append(f"| {r['input']} ({r['layers']}) | {r['max_length']} | {r['variant']} | {r['C']:g} | "
                     f"{r['logloss']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | {d[0]:+.4f} {_iv(d[1], d[2])} | "
                     f"{s[0]:+.4f} {_iv(s[1], s[2])} | {src[0]} | {src[1]} | {_ranks(per)} | {router} | "
                     f"{r['embed_s']:.0f} + {r['fit_s']:.0f} |")
    return "\n".join(lines)


def verdicts(recs: list[dict]) -> list[str]:
    """Per input and variant: at which token budgets it ranks each source's rows (Δ vs own mean resolved below 0) and
    beats the per-source constants."""
    out = []
    for source, layers, variant in dict.fromkeys((r["input"], r["layers"], r["variant"]) for r in recs):
        mine = [r for r in recs if (r["input"], r["layers"], r["variant"]) == (source, layers, variant)]
        ranks = []
        for k, lab in SOURCES:
            # the size of each resolved gain beside its budget: an interval can exclude zero around a gain of 1e-6
            at = [f"{r['max_length']} ({r['per_source'][k]['vs_own_mean'][0]:+.4f})" for r in mine
                  if k in r["per_source"] and verdict(_diff(r["per_source"][k]["vs_own_mean"])) == "a better"]
            ranks.append(f"{lab} at {', '.join(at) if at else 'none'}")
        const = [str(r["max_length"]) for r in mine if verdict(_diff(r["vs_source_constants"])) == "a better"]
        out.append(f"- **{source} ({layers} layers), {variant}**: ranks the rows (tokens) on {'; '.join(ranks)}; "
                   f"beats the per-source constants on the mix at {', '.join(const) if const else 'none'} "
                   f"(of {len(mine)} point(s)).")
    twins = [r for r in recs if "vs_hard_twin" in r]
    if twins:
        out.append("- **pooled-distilled minus its hard-label twin (pooled, same C)**, 95% interval over prompts, "
                   "bold where it excludes zero: " + "; ".join(f"{r['input']} ({r['layers']}), {r['max_length']} "
                                                              f"tokens: {_twin(r)}" for r in twins) + ".")
    return out


def _twin(r: dict) -> str:
    cells = []
    for k, lab in (("mix", "mix"), *SOURCES):
        v = r["vs_hard_twin"].get(k)
        if v is not None:
            bold = "**" if verdict(_diff(v)) != "not resolved at this size" else ""
            cells.append(f"{lab} {bold}{v[0]:+.4f}{bold} {_iv(v[1], v[2])}")
    return ", ".join(cells)


def write_report(log: Path) -> None:
    recs = read_log(log)
    model = recs[0]["model"] if recs else "—"
    body = "\n".join([
        "## Linear probe on frozen embeddings (benchmarks/linear_probe.py)\n",
        f"Does the pretrained representation rank the rows? {model} frozen, mean-pooled unit embeddings of prompt, "
        "answer A and answer B; a swap-symmetric multinomial logistic regression on [e_A − e_B, ⟨e_A, e_P⟩ − "
        "⟨e_B, e_P⟩, |e_A − e_B|], its C chosen by 2-fold grouped CV on train.csv only. Scored like the learning "
        "curve on the test split (496 rows, unseen questions; 95% cluster bootstrap over prompt groups). "
        "pooled: one probe; per-source: one probe per source, test rows routed by their true source (metadata Kaggle's "
        "test lacks: an upper bound); routed: the per-source probes mixed by a source classifier on the pair's sizes "
        "(chars, turns); pooled-distilled: one probe without the source, fitted to the per-source probes' out-of-fold "
        "probabilities on the training rows (a privileged teacher) instead of the hard labels, at pooled's C. "
        "Inputs: separate (each text embedded alone by the full backbone) or cross (the demo student's own rendered "
        "pair, both orientations, through its backbone pruned to the stated layers, frozen), pooled as a "
        "classifier head reads it (cross-head: MiniLM's first token; cross-mean: all tokens) or per field "
        "(cross-segment: each response's own tokens; benchmarks/cross_embeddings.py).\n",
        *verdicts(recs), "", table(recs), ""])
    atomic_write_text(SECTION_MD, body)
    replace_section(RESULTS, BEGIN, END, body)
    print(f"wrote {SECTION_MD} and the section in {RESULTS} ({len(recs)} points)")
