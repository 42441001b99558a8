#!/usr/bin/env bash
# The GPU measurements in one device call each (docs/gpu.md; the calls and their stages: launch/gpu_suite.py).
#
#   bash launch/stage_gpu.sh                # on this machine first: wheels, corpora and commit into .gpu_stage/
#   bash launch/gpu_suite.sh                # on the device (carry [".gpu_stage"]): the headline call
#   bash launch/gpu_suite.sh tests          # or: quality, sampling, pretrained, profile, variants, hot_path
#   GPU_DRY_RUN=1 bash launch/gpu_suite.sh [CALL]   # on a CPU: every stage shrunk, the same files and deadlines
#
# Each call ends within GPU_BUDGET_S (default 510 s) of its start. $OUT (default runs/gpu_suite) receives
# results.jsonl, summary.md and suite.log; the work lives in GPU_WORK_DIR (default /tmp/dlm_gpu_work).
# This wrapper makes the device's bare Python ready: a `python` shim where only python3 exists, the staged wheels
# of what it lacks (grain, ml_collections, tensorboardX) installed outside the tree, DLM_DATA_DIR pointed at the
# staged corpora and DLM_COMMIT at the staged commit (the device's copy has no .git).
set -euo pipefail
cd "$(dirname "$0")/.."
staged=.gpu_stage
work="${GPU_WORK_DIR:-/tmp/dlm_gpu_work}"
mkdir -p "$work"
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "error: neither python3 nor python is on PATH" >&2
  exit 2
fi
if ! command -v python >/dev/null 2>&1; then
  mkdir -p "$work/bin" && ln -sf "$py" "$work/bin/python"
  export PATH="$work/bin:$PATH"
fi
if ! "$py" -c "import grain, ml_collections, tensorboardX" >/dev/null 2>&1; then
  if ! ls "$staged"/whl/*.whl >/dev/null 2>&1; then
    echo "error: this Python lacks grain/ml_collections/tensorboardX and $staged/whl holds no wheels: run" \
         "'bash launch/stage_gpu.sh' on the development machine and carry \"$staged\" with the call" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
    "$staged"/whl/*.whl
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$staged/data" ] && [ -z "${DLM_DATA_DIR:-}" ]; then
  export DLM_DATA_DIR="$PWD/$staged/data"
fi
if [ -f "$staged/COMMIT" ] && [ -z "${DLM_COMMIT:-}" ]; then
  DLM_COMMIT="$(cat "$staged/COMMIT")"
  export DLM_COMMIT
fi
export GPU_WORK_DIR="$work" PYTHONUNBUFFERED=1
exec "$py" -m launch.gpu_suite "$@"
