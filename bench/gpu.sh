#!/usr/bin/env bash
# GPU checks and benchmarks in one call (issue 14): the tests marked gpu (CUDA vs CPU, bf16 on
# CUDA, a model split over the GPU and the CPU), then per embedded model the head sweep (fused vs
# plain hooks vs nnsight: bench/head_sweep.py) and the fused sweep in fp32 vs bf16 (bench/scale.py
# precision), then EAP and the other discovery methods (bench/discover.py). Every step has a time
# limit; a step that fails or is missing (a model not installed, nnsight absent) is logged and
# the next one runs. Everything lands in two files (the device tool returns at most 8):
#   $OUT/gpu.log      every step's full output
#   $OUT/summary.txt  the machine, each step's command, exit status and last lines
# Usage: bench/gpu.sh [OUT_DIR]   (default: $OUT, else bench/gpu-results); PYTHON=... to choose
# the interpreter (default .venv/bin/python, else python3). About 8 minutes on an H200.
# On this project's lent H200 (the `device` tool): its python3 has torch, transformers and
# accelerate but not pydantic, gguf or nnsight, and nothing can be fetched there: carry their
# wheels (pydantic pydantic-core annotated-types typing-inspection gguf graphviz; see the tool's
# README) and run `pip install --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site bench/gpu.sh`.
# The embedded models' files exceed what a call can carry, so there the real-model steps log
# "not installed" and the `random-smollm2` step (SmolLM2-135M's shapes, random weights) gives
# the fused-vs-hooks speed and the bf16 agreement.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
DIR="${1:-${OUT:-bench/gpu-results}}"
mkdir -p "$DIR"
LOG="$DIR/gpu.log" SUM="$DIR/summary.txt"
: > "$LOG"; : > "$SUM"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$SUM" >> "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$DIR/.step" 2>&1; local rc=$?
  cat "$DIR/.step" >> "$LOG"
  tail -n 12 "$DIR/.step" >> "$SUM"
  echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$SUM" >> "$LOG"
  rm -f "$DIR/.step"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'transformers', transformers.__version__)"
} >> "$SUM" 2>&1

step tests-gpu 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
step precision-random-smollm2 120 "$PY" -m bench.scale precision --model random-smollm2 --device cuda --peers
for model in smollm2-135m gemma3-270m; do
  step "head-sweep-$model" 150 "$PY" -m bench.head_sweep --model "$model" --device cuda --repeat 3
  step "precision-$model" 90 "$PY" -m bench.scale precision --model "$model" --device cuda --peers
done
step discover 120 "$PY" -m bench.discover --device cuda
echo "done: $LOG $SUM"
