"""The learning curve's table and plot: benchmarks/results/learning_curve.{md,png} from the JSON lines that
benchmarks/learning_curve.py appends, and the same section in benchmarks/RESULTS.md (between markers, so the rest
of that file — written by benchmarks/run_all.py, which copies this section back — is left alone)."""

from __future__ import annotations

import json
from pathlib import Path

from arena_kd.common.io import atomic_write_text
from arena_kd.common.metrics import verdict
from arena_kd.common.tables import pyplot, save_figure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION_MD = ROOT / "benchmarks" / "results" / "learning_curve.md"
PLOT = ROOT / "benchmarks" / "results" / "learning_curve.png"
THROUGHPUT = ROOT / "benchmarks" / "results" / "throughput.jsonl"
BEGIN, END = "<!-- learning-curve:begin -->", "<!-- learning-curve:end -->"
AXES = ("rows", "max_length", "epochs", "lora", "lr", "autocast", "threads", "head")
SOURCES = (("hh_harmless", "HH"), ("mtbench_human", "MT"))


def read_log(path: Path) -> list[dict]:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    for r in recs:  # the head's init std and LR, the step order: points logged before those existed ran at 0.02, lr
        # and HF's long -> short order within each mega-batch
        r["head"] = (f"σ{r.get('head_init_std', 0.02):g}, lr " + (f"{r['head_lr']:g}" if r.get("head_lr") else "= lr")
                     + ("" if r.get("order") == "shuffled" else ", HF order"))
    return recs


def _iv(lo: float, hi: float) -> str:
    return f"[{lo:+.4f}, {hi:+.4f}]"


def table(recs: list[dict]) -> str:
    head = ("| backbone | rows | max_len | epochs | lora | lr | head (init σ, LR), step order | threads | dtype | "
            "wall s (CPU s) | log loss [95%] | "
            "prior | Δ vs prior [95%] | Δ vs source constants [95%] | HH (const) | MT (const) | "
            "Δ vs own mean HH / MT [95%] | train tok/s (% GEMM) | "
            "predict tok/s (% GEMM) | load 1-min before/after |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in recs:
        d, s = r["vs_prior"], r["vs_source_constants"]
        per = r["per_source"]
        src = [f"{per[k]['logloss']:.4f} ({per[k]['constant']:.4f})" if k in per else "—" for k, _ in SOURCES]
        lines.append(
            f"| {r['backbone']} | {r['rows']} | {r['max_length']} | {r['epochs']} | {r['lora']} | {r['lr']:g} | "
            f"{r['head']} | {r['threads']} | {r['dtype']} | {r['wall_s']:.0f} ({r.get('cpu_s', '—')}) | "
            f"{r['logloss']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | {r['prior']:.4f} | "
            f"{d[0]:+.4f} {_iv(d[1], d[2])} | "
            f"{s[0]:+.4f} {_iv(s[1], s[2])} | "
            f"{src[0]} | {src[1]} | {_ranks(per)} | {r['train_tokens_per_s']:.0f} ({_fraction(r, 'train')}) | "
            f"{r['predict_tokens_per_s']:.0f} ({_fraction(r, 'predict')}) | "
            f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f} |")
    return "\n".join(lines)


def _ranks(per: dict) -> str:
    """Per source, the point against its own mean prediction (A/B pooled; ``common.metrics.own_mean``): below zero
    with the interval, it ranks that source's rows rather than only predicting the class mix. Points logged before
    this was kept show —."""
    cells = []
    for k, _ in SOURCES:
        v = per.get(k, {}).get("vs_own_mean")
        cells.append("—" if v is None else f"{v[0]:+.4f} {_iv(v[1], v[2])}")
    return " / ".join(cells)


def _fraction(r: dict, kind: str) -> str:
    """Achieved ÷ GEMM rate per CPU second; records written before CPU seconds were kept have none (their wall
    rates were measured at other loads than their GEMM rate, so no fair ratio exists)."""
    return f"{r[kind + '_fraction_of_gemm']:.0%}" if f"{kind}_cpu_s" in r else "n/a"


def verdicts(recs: list[dict]) -> list[str]:
    """Per backbone: the cheapest point whose interval against the prior (and the source constants) excludes 0."""
    out = []
    for bb in dict.fromkeys(r["backbone"] for r in recs):
        mine = sorted((r for r in recs if r["backbone"] == bb), key=lambda r: r["wall_s"])
        prior = [r for r in mine if verdict(_diff(r["vs_prior"])) == "a better"]
        const = [r for r in mine if verdict(_diff(r["vs_source_constants"])) == "a better"]
        line = f"- **{bb}**: {len(mine)} point(s); "
        line += (f"beats the class prior first at {_where(prior[0])}" if prior
                 else "beats the class prior at none of them")
        line += (f"; beats the per-source constants at {_where(const[0])}" if const
                 else "; beats the per-source constants at none")
        ranked = [r for r in mine if "vs_own_mean" in r["per_source"].get(SOURCES[0][0], {})]
        ranks = [f"{lab} at {sum(verdict(_diff(r['per_source'][k]['vs_own_mean'])) == 'a better' for r in ranked)}"
                 for k, lab in SOURCES if all(k in r["per_source"] for r in ranked)]
        line += (f"; ranks the rows better than its own mean on {', '.join(ranks)} of the {len(ranked)} point(s) "
                 "that measured it." if ranked else ".")
        out.append(line)
    return out


def _diff(v: list[float]) -> dict:
    return {"mean": v[0], "lo": v[1], "hi": v[2]}


def _where(r: dict) -> str:
    return (f"rows {r['rows']}, {r['max_length']} tokens, {r['epochs']} epoch(s), {r['lora']}, lr {r['lr']:g}, "
            f"head {r['head']}, {r['dtype']} ({r['wall_s']:.0f} s, Δ {r['vs_prior'][0]:+.4f})")


def plot(recs: list[dict], path: Path) -> None:
    """Paired Δ log loss vs the class prior (with its interval; below 0 = better than the prior) and cost against
    each axis that has more than one point per backbone. Cost: CPU seconds of the point (wall seconds, marked with
    a hollow marker, for early records without them: the machine's load varied, so wall times mislead)."""
    axes = [a for a in AXES if any(len({str(r[a]) for r in recs if r["backbone"] == bb}) > 1
                                    for bb in {r["backbone"] for r in recs})]
    if not axes:
        return
    plt = pyplot()
    fig, grid = plt.subplots(2, len(axes), figsize=(3.6 * len(axes), 6), squeeze=False)
    backbones = list(dict.fromkeys(r["backbone"] for r in recs))
    colours = {bb: f"C{i}" for i, bb in enumerate(backbones)}  # one colour per backbone in every panel
    for j, axis in enumerate(axes):
        for bb in backbones:
            pts = [r for r in recs if r["backbone"] == bb and _on_axis(r, axis, recs)]
            if len({str(r[axis]) for r in pts}) < 2:
                continue
            pts.sort(key=lambda r: (isinstance(r[axis], str), r[axis]))
            xs = [str(r[axis]) for r in pts]
            d = [r["vs_prior"] for r in pts]
            err = [[v[0] - v[1] for v in d], [v[2] - v[0] for v in d]]
            color = colours[bb]
            grid[0][j].errorbar(xs, [v[0] for v in d], yerr=err, marker="o", capsize=3, label=bb, color=color)
            grid[1][j].plot(xs, [r.get("cpu_s", r["wall_s"]) for r in pts], color=color, label=bb)
            for x, r in zip(xs, pts):
                grid[1][j].plot([x], [r.get("cpu_s", r["wall_s"])], marker="o", color=color,
                                mfc=color if "cpu_s" in r else "none")
        grid[0][j].axhline(0.0, color="grey", ls="--", lw=1)
        grid[0][j].set_title(f"Δ log loss vs prior, by {axis}", fontsize=9)
        grid[1][j].set_title(f"CPU s (hollow: wall s) by {axis}", fontsize=9)
        grid[1][j].set_xlabel(axis)
        if grid[0][j].get_legend_handles_labels()[0]:
            grid[0][j].legend(fontsize=7)
    save_figure(fig, path, dpi=80)


def _on_axis(r: dict, axis: str, recs: list[dict]) -> bool:
    """True when ``r`` differs from its backbone's most common point only along ``axis`` (a one-axis sweep)."""
    mine = [x for x in recs if x["backbone"] == r["backbone"]]
    base = {}
    for a in AXES:
        vals = [str(x[a]) for x in mine]
        base[a] = max(set(vals), key=vals.count)
    return all(str(r[a]) == base[a] for a in AXES if a != axis)


def throughput_table(recs: list[dict]) -> str:
    """benchmarks/learning_curve_throughput.py's lines: fp32 vs bf16 autocast, per CPU second and wall."""
    if not recs:
        return "Throughput: not measured yet (benchmarks/learning_curve_throughput.py).\n"
    lines = ["### Training and prediction throughput, fp32 vs bf16 autocast "
             "(benchmarks/learning_curve_throughput.py)\n",
             "Interleaved rounds in one process (a busy machine slows both alike); per CPU second of the process.\n",
             "| backbone | threads | kind | mode | tokens/CPU s | tokens/s wall | GFLOP/CPU s | "
             "% of GEMM (same dtype) | % of fp32 GEMM | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r['backbone']} ({r['lora']}, {r['max_length']} tok) | {r['threads']} | {r['kind']} | "
                     f"{r['mode']} | {r['tokens_per_cpu_s']:.0f} | {r['tokens_per_s']:.0f} | "
                     f"{r['gflops_per_cpu_s']} | "
                     f"{r['fraction_of_gemm']:.0%} | {r['fraction_of_fp32_gemm']:.0%} | {r['load']} |")
    return "\n".join(lines) + "\n"


def replace_section(results: Path, begin: str, end: str, body: str) -> None:
    """Put ``body`` between its markers in ``results`` (benchmarks/RESULTS.md), or append it with them."""
    text = results.read_text() if results.is_file() else "# Benchmark results\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(results, text)


def write_report(log: Path) -> None:
    recs = read_log(log)
    plot(recs, PLOT)
    body = "\n".join([
        "## Learning curve (`make bench-learning`, benchmarks/learning_curve.py)\n",
        "Held-out: the sample's test split (496 rows, questions disjoint from train.csv); Δ = paired log-loss "
        "difference, 95% cluster-bootstrap interval over prompt groups; prior and per-source constants fitted on the "
        "same training rows. Δ vs own mean: per source, the point against its own mean prediction on that source's "
        "rows (A/B pooled; no label used) — below zero with its interval, it ranks the rows (says which answer is "
        "better) rather than only predicting the source's class mix. tok/s: wall, on the threads shown; "
        "% GEMM = achieved matmul FLOPs per CPU second ÷ "
        "this machine's 1024² GEMM FLOPs per CPU second in the same dtype and thread count "
        "(benchmarks/learning_curve_flops.py). "
        "Load = `/proc/loadavg` 1-minute figure before / after the point (2 cores, shared).\n",
        *verdicts(recs), "",
        table(recs), "",
        throughput_table(read_log(THROUGHPUT)), "",
        f"![learning curve]({PLOT.relative_to(RESULTS.parent).as_posix()})" if PLOT.is_file() else "", ""])
    atomic_write_text(SECTION_MD, body)
    replace_section(RESULTS, BEGIN, END, body)
    print(f"wrote {SECTION_MD}, {PLOT} and the section in {RESULTS} ({len(recs)} points)")
