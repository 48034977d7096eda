"""`arena-kd` command line (typer). Every stage takes --config PATH and repeatable --set key=value.

User mistakes (missing file, bad config, bad data) print one line and exit 2 — no traceback.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from arena_kd.common.errors import UserError
from arena_kd.common.keys import FORMATS
from arena_kd.kaggle_metadata import MAX_DATASET_GB
from arena_kd.kaggle_wheels import KAGGLE_PYTHON
from arena_kd.kfold.dist import CollectiveFailure, stage_guard

DEFAULT_CONFIG = "configs/demo.yaml"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Knowledge distillation + stacking pipeline for LMSYS Chatbot Arena preference prediction.",
)

ConfigOpt = typer.Option([DEFAULT_CONFIG], "--config", "-c",
                         help="Pipeline YAML config; repeat to lay override files over a base "
                         "(--config configs/kaggle-gemma2.yaml --config configs/rehearsal.yaml).")
SetOpt = typer.Option(None, "--set", help="Override a config value: dotted.key=value (repeatable).")
ForceOpt = typer.Option(False, "--force", help="Redo work whose outputs already exist.")


def _cfg(config: List[str], sets: Optional[List[str]]):
    from arena_kd.common.config import load_config

    return load_config(config, sets or [])


@app.command()
def teachers(config: List[str] = ConfigOpt, set: Optional[List[str]] = SetOpt, force: bool = ForceOpt) -> None:
    """Fine-tune each teacher k-fold and write out-of-fold logits; combine them into soft labels.

    Outputs: <workdir>/teachers/<name>/oof.parquet (+meta.json), <workdir>/teachers/soft_labels.parquet.
    Resumable per fold.
    """
    cfg = _cfg(config, set)  # config errors first: fast, and before any heavy import
    from arena_kd.teachers.run import run_teachers

    with stage_guard("teachers"):
        run_teachers(cfg, force=force)


@app.command()
def distill(config: List[str] = ConfigOpt, set: Optional[List[str]] = SetOpt, force: bool = ForceOpt) -> None:
    """Distil the teachers' soft labels plus the hard labels into the student (k-fold OOF + final export).

    Outputs: <workdir>/student/oof.parquet (+meta), <workdir>/student/export/ (everything `submission` needs).
    """
    cfg = _cfg(config, set)
    from arena_kd.student.run import run_distill

    with stage_guard("distill"):
        run_distill(cfg, force=force)


@app.command()
def stack(config: List[str] = ConfigOpt, set: Optional[List[str]] = SetOpt, force: bool = ForceOpt) -> None:
    """Train the LightGBM stacker on student OOF logits + length/similarity features, then fit a temperature.

    Outputs: <workdir>/stacking/ (LightGBM text models, stacker.json with the temperatures, report.md + PNGs).
    """
    cfg = _cfg(config, set)
    from arena_kd.stacking.run import run_stacking

    run_stacking(cfg, force=force)


@app.command()
def submission(
    config: List[str] = ConfigOpt,
    set: Optional[List[str]] = SetOpt,
    test: Optional[str] = typer.Option(None, "--test", help="Test CSV (Kaggle layout); default data.test."),
    out: Optional[str] = typer.Option(None, "--out", help="Output CSV; default <workdir>/submission.csv."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall-clock budget, e.g. 30600 or 8h30m."),
) -> None:
    """Predict the test pairs offline (student with swap TTA → features → stacker → temperature) and write
    submission.csv.

    Always writes a valid file inside the time budget, degrading (no TTA, shorter inputs, features-only) when needed.
    """
    cfg = _cfg(config, set)
    from arena_kd.submission.run import run_submission

    run_submission(cfg, test=test, out=out, time_budget=time_budget)


@app.command()
def evaluate(
    pred: str = typer.Option(..., "--pred", help="Predictions CSV (id, winner_model_a, winner_model_b, winner_tie)."),
    labels: str = typer.Option(..., "--labels", help="Labelled CSV (Kaggle train layout) with the same ids."),
) -> None:
    """Print log loss, accuracy and per-class calibration of a predictions file against labels."""
    from arena_kd.evaluate import evaluate_files

    evaluate_files(pred, labels)


@app.command("validate-data")
def validate_data(
    path: str = typer.Argument(..., help="Data file (Kaggle CSV, arena JSONL/Parquet, chosen/rejected pairs)."),
    format: str = typer.Option("auto", "--format", help="|".join(FORMATS)),
) -> None:
    """Read and validate a data file; print rows, labels, turn histogram, repaired/flagged counts and length
    percentiles."""
    from arena_kd.data.validate import validate_data_report

    validate_data_report(path, fmt=format)


@app.command("make-pairs")
def make_pairs_cmd(
    sources: List[str] = typer.Option(..., "--from", help="Files whose rows hold models' answers (train.csv, arena "
                                      "JSONL; repeatable). Rows without model names give nothing."),
    exclude: List[str] = typer.Option(..., "--exclude", help="Files whose questions never appear (the test split; "
                                      "repeatable)."),
    out: str = typer.Option(..., "--out", help="Output CSV (Kaggle pair layout without winner columns)."),
    labelled: Optional[List[str]] = typer.Option(None, "--labelled", help="More labelled files whose pairs must not "
                                                 "be repeated (the --from files always count)."),
    seed: int = typer.Option(0, "--seed", help="Draws which answer is A (and the subset under --max-pairs)."),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", min=1, help="Keep a seeded subset of N pairs."),
) -> None:
    """Write unlabelled pairs: two models' answers to the same prompt that no labelled row compares, none on an
    excluded question (data/unlabelled_pairs.py). Add the file to data.extra for the teachers to pseudo-label."""
    from arena_kd.data.unlabelled_pairs import make_pairs

    done = make_pairs(sources, exclude, out, labelled=labelled, seed=seed, max_pairs=max_pairs)
    print(f"{done['pairs']} unlabelled pairs on {done['prompts']} prompts -> {done['out']}")


@app.command()
def plan(
    config: List[str] = ConfigOpt,
    set: Optional[List[str]] = SetOpt,
    test: Optional[str] = typer.Option(None, "--test",
                                       help="Test CSV whose token counts drive the estimate; default data.test."),
    hardware: str = typer.Option("t4x2", "--hardware", help="t4x2 | t4x1 | l4 | a100-40 | a100-80 | h100 | h200"),
    calibration: Optional[List[str]] = typer.Option(
        None, "--calibration",
        help="GPU results file written by benchmarks/gpu_check.sh (repeatable); shipped files are read anyway."),
    test_chars: Optional[float] = typer.Option(
        None, "--test-chars-per-row",
        help="Mean characters of a hidden-test row; default: the competition's ~3,100 when the test file stands in "
        "for more rows; 0: the file's own lengths."),
    as_json: bool = typer.Option(
        False, "--json",
        help="Print the plan as one JSON object (stages with low_s/expected_s/high_s and sources, budget_s, verdict)."),
) -> None:
    """Estimate wall time (low/expected/high) and GPU memory of every stage; say if the Kaggle submission fits its
    budget."""
    cfg = _cfg(config, set)
    from arena_kd.planner.plan import run_plan

    run_plan(cfg, test=test, hardware=hardware, as_json=as_json, calibration_files=calibration, test_chars=test_chars)


@app.command()
def package(
    artifacts: str = typer.Option(..., "--artifacts",
                                  help="Run folder of a trained run (its workdir: student/export/, stacking/)."),
    owner: str = typer.Option(..., "--owner", help="Your Kaggle username (the owner of the datasets and notebook)."),
    out: str = typer.Option("upload", "--out", help="Folder for the upload (replaced only if this command wrote it)."),
    prefix: str = typer.Option(
        "arena-kd", "--prefix",
        help="Slug prefix: datasets <prefix>-code|-artifacts|-wheels, notebook <prefix>-submission."),
    python_version: str = typer.Option(
        KAGGLE_PYTHON, "--python-version",
        help="Python of the Kaggle image the wheels are for (an assumption; check `!python --version` there)."),
    wheel_cache: Optional[str] = typer.Option(
        None, "--wheel-cache", help="Folder of wheels used when the package index is unreachable (no network)."),
    no_download: bool = typer.Option(
        False, "--no-download",
        help="Do not ask the package index; wheels from --wheel-cache, else only arena-kd's own wheel."),
    max_dataset_gb: float = typer.Option(MAX_DATASET_GB, "--max-dataset-gb", min=0.001,
                                         help="Size above which a dataset is refused (assumption: Kaggle's quota)."),
) -> None:
    """Write the Kaggle upload: code, artifacts and wheels datasets with their metadata, the submission notebook
    (internet off, 2x T4) with its metadata; print the `kaggle` commands that upload and submit it, in order."""
    from pathlib import Path

    from arena_kd.kaggle_package import package as build_package
    from arena_kd.kaggle_wheels import download_from_index

    summary = build_package(Path(artifacts), owner, Path(out), prefix=prefix, python_version=python_version,
                            wheel_cache=Path(wheel_cache) if wheel_cache else None,
                            download=None if no_download else download_from_index, max_gb=max_dataset_gb)
    wheels = summary["wheels"]
    print(f"wrote {out}/: {', '.join(summary['datasets'])} (datasets), {summary['kernel']} (notebook)")
    print(f"wheels for Python {wheels['python_version']} {wheels['platform']} from {wheels['source']}: "
          f"{len(wheels['wheels'])} files" + (f" ({wheels['note']})" if wheels["note"] else ""))
    print("then, in order:")
    for cmd in summary["commands"]:
        print(f"  {cmd}")


@app.command("all")
def run_all(config: List[str] = ConfigOpt, set: Optional[List[str]] = SetOpt, force: bool = ForceOpt) -> None:
    """Run teachers → distill → stack → submission, then write <workdir>/report.md."""
    cfg = _cfg(config, set)
    from arena_kd.pipeline import run_pipeline

    with stage_guard("all"):  # each stage of the pipeline names itself inside
        run_pipeline(cfg, force=force)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except CollectiveFailure as exc:  # a multi-process launch out of step: one line per rank, not a hang
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except (typer.Exit, SystemExit) as exc:  # --help etc.
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # click usage errors (typer may vendor click as typer._click: match by shape)
        if type(exc).__module__.endswith("click.exceptions"):
            if hasattr(exc, "show"):  # ClickException: usage errors, missing options, bad values
                exc.show()
                sys.exit(2)
            if type(exc).__name__ == "Abort":
                sys.exit(130)
        raise


if __name__ == "__main__":
    main()
