#!/usr/bin/env bash
# The denoiser comparison at CPU scale (configs/shakespeare_char_small.py): the three denoisers and the AR arm at
# matched parameters and tokens, the memory-slot sweep M in {8, 16, 32}, and the HRM ablations. About 40 minutes
# on 2 cores.
#   bash launch/compare_small.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs/small}"
cfg=configs/shakespeare_char_small.py
train() { name=$1; shift; python -m launch.train --config="$@" --workdir="$runs/$name" --config.tensorboard=false \
  > "$runs/$name.log" 2>&1 || { echo "run $name failed, see $runs/$name.log" >&2; exit 1; }; }
mkdir -p "$runs"
train diffusion $cfg:diffusion
train ar $cfg:ar
train eco_m16 $cfg:eco
train eco_m8 $cfg:eco --config.model.memory_slots=8
train eco_m32 $cfg:eco --config.model.memory_slots=32
train hrm $cfg:hrm
train hrm_no_h $cfg:hrm --config.model.use_h_module=false
train hrm_no_memory $cfg:hrm --config.model.use_memory=false
train hrm_no_act $cfg:hrm --config.model.act=false
python -m launch.summarize "$runs"/diffusion "$runs"/ar "$runs"/eco_m16 "$runs"/eco_m8 "$runs"/eco_m32 "$runs"/hrm \
  "$runs"/hrm_no_h "$runs"/hrm_no_memory "$runs"/hrm_no_act
