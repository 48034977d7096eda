"""The whole recipe under multi-process launches (issue 22), launched as users launch it (`accelerate launch`):

* `arena-kd all` on 2 data-parallel CPU processes (configs/accelerate/cpu-2proc.yaml) runs to a valid submission —
  both smoke teachers (two architectures), the distilled student, the hard-label twin, stacking, submission, report —
  with the same chosen stacker and logits within 1e-3 of one process (same global batch: 2 x 4 rows = 1 x 8 rows);
* FSDP-QLoRA (configs/accelerate/fsdp-qlora-cpu.yaml): both smoke teachers (Gemma2, then Llama) in 4-bit in one
  launch, each sharded by its own decoder-layer class; both ranks killed after a mid-fold checkpoint, resumed, and
  the fold logits equal an uninterrupted run;
* `arena-kd distill` writes the folds file on rank 0 first (the other rank waits, then reads it);
* a collective that another rank never joins fails after collective_timeout_s with the rank and stage named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _dist_launch import REPO, balanced_folds_file, launch_env, launch_probe, writes_under

from arena_kd.common.io import read_keyed_table

SMOKE = REPO / "configs" / "smoke.yaml"
LOGITS = ["logit_a", "logit_b", "logit_tie"]
TTA_LOGITS = [*LOGITS, "orig_logit_a", "orig_logit_b", "orig_logit_tie"]
PROBS = ["winner_model_a", "winner_model_b", "winner_tie"]
# every model of the smoke config at half the per-process batch: 2 processes x 4 rows = the 8 rows of one process
HALF_BATCH = ["--set", "teachers.models.0.train.batch_size=4", "--set", "teachers.models.1.train.batch_size=4",
              "--set", "student.train.batch_size=4"]
FSDP_TEACHERS = ["--set", "teachers.models.0.model.quantization=4bit",
                 "--set", "teachers.models.1.model.quantization=4bit",
                 # 6 steps and a checkpoint at step 3 (mid-epoch 2) for the first teacher: a resume point mid-fold
                 "--set", "teachers.models.0.train.epochs=3", "--set", "teachers.models.0.train.save_steps=3"]


def _aligned(a: pd.DataFrame, b: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert sorted(a["id"]) == sorted(b["id"])
    return a[cols].to_numpy(dtype=np.float64), b.set_index("id").loc[a["id"], cols].to_numpy(dtype=np.float64)


def _assert_same_table(path_a: Path, path_b: Path, cols: list[str], atol: float) -> None:
    a, b = _aligned(read_keyed_table(path_a)[0], read_keyed_table(path_b)[0], cols)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=str(path_a))


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """`arena-kd all` once under cpu-2proc.yaml (through the probe) and once in one process, same folds file."""
    d = tmp_path_factory.mktemp("all")
    folds = balanced_folds_file(d, SMOKE)
    common = ["--config", str(SMOKE), "--set", f"folds.file={folds}"]
    _, rec = launch_probe("cpu-2proc.yaml", d / "rec", ["all", *common, "--set", f"workdir={d / 'mp'}", *HALF_BATCH],
                          timeout=600)
    one = subprocess.run([sys.executable, "-m", "arena_kd.cli", "all", *common, "--set", f"workdir={d / 'one'}"],
                         cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    return d / "mp", d / "one", rec


def test_all_under_two_processes_runs_every_stage_like_one_process(pipelines):
    mp, one, rec = pipelines
    # 2 teachers (Gemma2, Llama) x 2 folds, 2 fold students, the final student, the hard-label twin: all on 2 ranks
    for r in (0, 1):
        calls = rec[r]["train_calls"]
        assert len(calls) == 8 and all(c["world"] == 2 and c["backend"] == "gloo" for c in calls)
        assert not any(c["is_fsdp_enabled"] for c in calls)
    assert writes_under(rec[1], mp) == []  # only rank 0 wrote; it alone stacked, submitted and reported
    for stage_output in ("teachers/soft_labels.parquet", "student/export/export.json",
                         "ablation_hard_student/student/export/export.json", "stacking/stacker.json", "report.md"):
        assert (mp / stage_output).is_file(), stage_output

    sub = pd.read_csv(mp / "submission.csv", dtype={"id": str})
    test_ids = pd.read_csv(REPO / "data" / "sample" / "test.csv", dtype={"id": str})["id"]
    assert sorted(sub["id"]) == sorted(test_ids)
    p = sub[PROBS].to_numpy()
    assert np.isfinite(p).all() and (p > 0).all() and np.allclose(p.sum(axis=1), 1.0, atol=1e-6)

    selection = [json.loads((w / "stacking" / "stacker.json").read_text())["selection"] for w in (mp, one)]
    assert selection[0] == selection[1]
    # tolerance: same rows per global batch, order and initialisation; the gloo all-reduce adds float rounding
    for table in ("teachers/tiny-gemma2/oof.parquet", "teachers/tiny-llama/oof.parquet", "student/oof.parquet"):
        _assert_same_table(mp / table, one / table, TTA_LOGITS if table.startswith("student") else LOGITS, 1e-3)
    for export in ("student/export", "ablation_hard_student/student/export"):
        _assert_same_table(mp / export / "reference_logits.parquet", one / export / "reference_logits.parquet",
                           ["prob_a", "prob_b", "prob_tie"], 1e-3)
    a, b = _aligned(sub, pd.read_csv(one / "submission.csv", dtype={"id": str}), PROBS)
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)


def test_fsdp_two_architectures_in_one_launch_and_resume_after_a_kill(tmp_path):
    teachers = ["teachers", "--config", str(SMOKE), *FSDP_TEACHERS]
    _, full = launch_probe("fsdp-qlora-cpu.yaml", tmp_path / "rec_full",
                           [*teachers, "--set", f"workdir={tmp_path / 'full'}"])
    for r in (0, 1):  # each model sharded by its own decoder layers: Gemma2's, then Llama's (FSDP2 renames Foo FSDPFoo)
        calls = full[r]["train_calls"]
        assert len(calls) == 4 and all(c["is_fsdp_enabled"] and c["sharded"] and c["world"] == 2 for c in calls)
        assert all("FSDPGemma2DecoderLayer" in c["wrapped"] for c in calls[:2])
        assert all("FSDPLlamaDecoderLayer" in c["wrapped"] and not any("Gemma2" in w for w in c["wrapped"])
                   for c in calls[2:])
        assert [c["global_step"] for c in calls[:2]] == [6, 6]

    cut = tmp_path / "cut"
    proc, killed = launch_probe("fsdp-qlora-cpu.yaml", tmp_path / "rec_kill", [*teachers, "--set", f"workdir={cut}"],
                                env=launch_env(PROBE_KILL_AFTER_SAVE_STEP="3"), expect_ok=False)
    assert proc.returncode != 0 and [killed[r].get("killed_after_step") for r in (0, 1)] == [3, 3]
    fold0 = cut / "teachers" / "tiny-gemma2" / "fold0"
    assert (fold0 / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()
    assert not (cut / "teachers" / "tiny-gemma2" / "fold0.parquet").exists()

    _, resumed = launch_probe("fsdp-qlora-cpu.yaml", tmp_path / "rec_resume", [*teachers, "--set", f"workdir={cut}"])
    for r in (0, 1):
        first = resumed[r]["train_calls"][0]
        assert first["resumed_from"] == str(fold0 / "checkpoints" / "checkpoint-3") and first["global_step"] == 6
    # measured: identical (0.0) with the resumed epoch's data order restored; 7.7e-3 when it replayed epoch 0's
    for name in ("tiny-gemma2", "tiny-llama"):
        for k in (0, 1):
            path = Path("teachers") / name / f"fold{k}.parquet"
            _assert_same_table(cut / path, tmp_path / "full" / path, TTA_LOGITS, 1e-5)


def test_distill_writes_the_folds_file_on_rank_zero_first(tmp_path):
    wd = tmp_path / "wd"
    args = ["distill", "--config", str(SMOKE), "--set", f"workdir={wd}", "--set", "student.distill.alpha=0",
            "--set", "student.oof=false", "--set", "student.final=none"]
    # rank 0 publishes folds.csv 2 s late: a rank that did not wait for it would find nothing and write its own
    _, rec = launch_probe("cpu-2proc.yaml", tmp_path / "rec", args, env=launch_env(PROBE_SLOW_MAIN_WRITE="folds.csv"))
    assert str((wd / "folds.csv").resolve()) in writes_under(rec[0], wd)
    assert writes_under(rec[1], wd) == []
    folds = pd.read_csv(wd / "folds.csv")
    assert len(folds) == 48 and set(folds["fold"]) == {0, 1}


STUCK = '''
import sys
import time

from arena_kd.kfold import dist

dist.start(timeout_s=float(sys.argv[1]))
if dist.rank() == 1:
    time.sleep(float(sys.argv[2]))  # never joins the barrier
    sys.exit(0)
try:
    with dist.stage_guard("teachers"):
        dist.barrier()
except dist.CollectiveFailure as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
print("barrier passed")
'''


def test_a_collective_nobody_joins_fails_with_rank_and_stage_instead_of_hanging(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    # rank 1 sleeps 60 s; rank 0 must give up after the 2 s timeout (the subprocess timeout is the hang guard)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), "2", "60"], cwd=REPO, env=launch_env(), capture_output=True, text=True,
                          timeout=50)
    assert proc.returncode != 0 and "barrier passed" not in proc.stdout
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error: rank 0 of 2"))
    assert "stage 'teachers'" in line and "collective_timeout_s=2" in line and "Timed out" in line
