#!/usr/bin/env bash
# One prepared command for a short GPU window (<= 8 minutes, no internet): measures what the planner needs and
# writes the results file it reads.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run       # tiny shapes on CPU: proves the script works (run by the tests)
#   bash benchmarks/gpu_check.sh --fetch-wheels  # BEFORE the window, on a machine with a package index:
#                                                # fills benchmarks/wheels/ (git-ignored, <= 64 MiB) to carry along
#
# Steps: (1) install what is missing (bitsandbytes, peft, accelerate, the CLI's deps) from benchmarks/wheels/ with
# --no-index, and say which wheel was used; (2) benchmarks/gpu_throughput.py --rehearsal: Gemma2-9B-shaped random
# weights built once, inference tokens/s + peak memory at 1024 and 2000 tokens in bf16 / fp16 / bnb 8-bit / bnb
# 4-bit, a QLoRA r=64 step at 1024 tokens with gradient checkpointing, then the smoke pipeline (train + export) on
# CUDA with fp16 autocast and paged 8-bit AdamW, and the GPU-marked tests; whatever cannot run is skipped and named
# in the results file (saved after every measurement, so a cut-short window still leaves one); (3) prints what the
# planner makes of it: the efficiencies it will use, each "calibrated from <file>, <card>, <date>".
# Extra arguments go to gpu_throughput.py (e.g. --layers 14, --out FILE). Environment: PYTHON (default .venv/bin/python
# when present, else python3), WHEELS (default benchmarks/wheels), GPU_CHECK_BUDGET_S (default 420: the timeout of step 2).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
WHEELS="${WHEELS:-benchmarks/wheels}"
BUDGET="${GPU_CHECK_BUDGET_S:-420}"
# import name=distribution: bitsandbytes for the measurements; the rest for the rehearsal (the project's CLI and
# tests) on a GPU image that has torch/transformers/pandas but not these. ~50 MiB of wheels in all.
WHEEL_PKGS=(bitsandbytes=bitsandbytes peft=peft accelerate=accelerate typer=typer click=click shellingham=shellingham
  rich=rich markdown_it=markdown-it-py mdurl=mdurl pygments=pygments pydantic=pydantic pydantic_core=pydantic-core
  annotated_types=annotated-types typing_inspection=typing-inspection lightgbm=lightgbm yaml=pyyaml
  pytest=pytest pluggy=pluggy iniconfig=iniconfig)
MAX_WHEELS_MIB=64

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p "$WHEELS"
  specs=$("$PY" - "${WHEEL_PKGS[@]}" <<'PYEOF'
import importlib.metadata as md, sys
for pair in sys.argv[1:]:  # pin what this (working) environment has
    dist = pair.split("=", 1)[1]
    print(f"{dist}=={md.version(dist)}")
PYEOF
) || exit 1
  # shellcheck disable=SC2086
  "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" $specs || exit 1
  size=$(du -sm "$WHEELS" | cut -f1)
  echo "gpu_check: $WHEELS holds ${size} MiB:"; ls -la "$WHEELS"
  (( size <= MAX_WHEELS_MIB )) || { echo "gpu_check: over ${MAX_WHEELS_MIB} MiB"; exit 1; }
  exit 0
fi

DRY=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && DRY=1; done
start=$(date +%s)
echo "gpu_check: python $("$PY" -c 'import sys; print(sys.version.split()[0])'), $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# (1) missing packages from the local wheel folder (never from the network); find_spec: no slow imports here
missing=$("$PY" - "${WHEEL_PKGS[@]}" transformers=transformers <<'PYEOF'
import importlib.metadata as md, importlib.util as iu, sys
for pair in sys.argv[1:]:
    mod, dist = pair.split("=", 1)
    if iu.find_spec(mod) is None:
        print(dist)
    else:
        print(f"gpu_check: {dist} {md.version(dist)} already installed", file=sys.stderr)
PYEOF
)
for pkg in $missing; do
  whl=$(ls "$WHEELS"/"${pkg//-/_}"-*.whl 2>/dev/null | head -n1)
  if [[ -n "$whl" && $DRY == 0 ]]; then
    if "$PY" -m pip install -q --no-index --no-deps "$whl"; then
      echo "gpu_check: installed $pkg from $whl"
    else
      echo "gpu_check: $pkg: installing $whl FAILED; its steps will be skipped"
    fi
  else
    echo "gpu_check: $pkg missing and no wheel used from $WHEELS; its steps will be skipped"
  fi
done
if [[ $DRY == 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible; nothing to measure (use --dry-run to check the script on CPU)"
  exit 0
fi

# (2) the measurements + the rehearsal, inside the window
out_args=()
if [[ " $* " != *" --out "* ]]; then
  if [[ $DRY == 1 ]]; then out_args=(--out "${TMPDIR:-/tmp}/gpu_check_dry_run.json"); fi
fi
timeout "$BUDGET" "$PY" benchmarks/gpu_throughput.py --rehearsal --budget-s "$(( BUDGET - 15 ))" "${out_args[@]}" "$@" \
  | tee "${TMPDIR:-/tmp}/gpu_check.log"
rc=${PIPESTATUS[0]}
[[ $rc == 124 ]] && echo "gpu_check: gpu_throughput.py stopped at the ${BUDGET}s budget (raise GPU_CHECK_BUDGET_S or pass --layers)"
file=$(sed -n 's/^results file: //p' "${TMPDIR:-/tmp}/gpu_check.log" | tail -n1)  # saved after every measurement
[[ -n "$file" && -f "$file" ]] || { echo "gpu_check: no results file written (exit $rc)"; exit 1; }

# (3) what the planner makes of it
"$PY" - "$file" <<'PYEOF'
import sys
from arena_kd.planner.calibration import efficiencies, read_results
r = read_results(sys.argv[1])
print(f"gpu_check: {sys.argv[1]}: {r.card}, {r.date}, {len(r.records)} records, {len(r.skipped)} skipped, dry_run={r.dry_run}")
for s in r.steps:
    print(f"  step {s['name']}: {s['status']} ({s['seconds']}s)")
for s in r.skipped:
    print(f"  skipped {s['what']}: {s['why']}")
for (hw, prec, mode), c in sorted(efficiencies(r).items()):
    print(f"  planner: {hw} {prec} {mode}: efficiency {c.efficiency:.3f} ({c.provenance})")
PYEOF
echo "gpu_check: done in $(( $(date +%s) - start ))s; commit $file (under planner/calibration_data/ it is shipped to the planner)"
