#!/usr/bin/env bash
# Thought tensors (issue 15): the thought model against its parameter-matched baseline on the same target windows.
#   bash dlm_jax/proj/thought/compare.sh [RUNS_DIR] [CONFIG]
# CONFIG defaults to dlm_jax/proj/thought/configs/small.py (2 CPU cores: ~20 min of training, ~3 of evaluation); on
# a GPU with dlm_jax/proj/thought/configs/gpu.py (more than one 10-minute device call: docs/gpu.md). Re-running
# continues: finished runs resume as finished, interrupted ones where they stopped.
# 1. trains the ":thought" and ":baseline" arms;
# 2. python -m dlm_jax.proj.thought.report: NELBO of the target windows per memory depth (0 = the thought model
#    without its thought) and the baseline's on the same windows; diversity, compression probe, alignment, coherence
#    and the stability of the thought along the reverse process; written to RUNS_DIR/report.json.
set -euo pipefail
cd "$(dirname "$0")/../../.."  # the repository root
runs="${1:-runs/thought}"
cfg="${2:-dlm_jax/proj/thought/configs/small.py}"
mkdir -p "$runs"
for arm in thought baseline; do
  python -m launch.train --config="$cfg:$arm" --workdir="$runs/$arm" --config.tensorboard=false \
    --config.sample.num_samples=0 >> "$runs/$arm.log" 2>&1 || { echo "run $arm failed, see $runs/$arm.log" >&2; exit 1; }
done
python -m dlm_jax.proj.thought.report --workdir="$runs/thought" --baseline_workdir="$runs/baseline" --time_samples=8 \
  --out="$runs/report.json"
