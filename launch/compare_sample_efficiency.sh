#!/usr/bin/env bash
# Diffusion's sample efficiency on nanoGPT's CPU recipe (configs/nanogpt_cpu.py; issue #31; BENCHMARKS.md "Diffusion
# sample efficiency"): per seed, the AR arm, MDLM's ELBO, complementary mask pairs at the same compute, importance-
# sampled times, the clipped time window, a 250-update AR run continued by 1,750 updates of diffusion from it with
# shifted logits and the window, the best combination, the same with two masks per sequence (`:diffusion_best`,
# issue #31's target row), and the best within 1.5x the AR arm's wall time (500 AR updates, then `:diffusion_budget`:
# two masks for the first 1,100 of 1,500 updates); then one table (final validation NELBO, the training loss
# estimator's std, tokens/s). About 2 minutes per run on 2 cores (3 for the two-mask row), 20 minutes per seed.
#   bash launch/compare_sample_efficiency.sh [RUNS_DIR] [SEEDS (default "0 1")]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs/sample_efficiency}"
seeds="${2:-0 1}"
cfg=configs/nanogpt_cpu.py
window="--config.diffusion.time_low=0.3 --config.diffusion.time_high=0.8"
train() { name=$1; shift; python -m launch.train --config="$@" --workdir="$runs/$name" --config.tensorboard=false \
  > "$runs/$name.log" 2>&1 || { echo "run $name failed, see $runs/$name.log" >&2; exit 1; }; }
mkdir -p "$runs"
names=()
for s in $seeds; do
  seed="--config.seed=$s --config.data.seed=$s"
  train "ar_s$s" $cfg:ar $seed
  train "diffusion_s$s" $cfg:diffusion $seed
  train "pairs_s$s" $cfg:diffusion $seed --config.train.batch_size=6 --config.diffusion.masks_per_sequence=2 \
    --config.diffusion.mask_coupling=complementary
  train "importance_s$s" $cfg:diffusion $seed --config.diffusion.time_sampling=importance
  train "window_s$s" $cfg:diffusion $seed $window
  train "ar250_s$s" $cfg:ar $seed --config.train.num_steps=250
  train "converted_window_s$s" $cfg:diffusion_from_ar $seed $window --config.train.num_steps=1750 \
    --config.train.init_from_run="$runs/ar250_s$s"
  train "best_s$s" $cfg:diffusion_best $seed --config.train.init_from_run="$runs/ar250_s$s"  # + 2 masks
  train "ar500_s$s" $cfg:ar $seed --config.train.num_steps=500
  train "budget_s$s" $cfg:diffusion_budget $seed --config.train.init_from_run="$runs/ar500_s$s"
  names+=("$runs/ar_s$s" "$runs/diffusion_s$s" "$runs/pairs_s$s" "$runs/importance_s$s" "$runs/window_s$s"
          "$runs/converted_window_s$s" "$runs/best_s$s" "$runs/budget_s$s")
done
python -m launch.summarize "${names[@]}"
