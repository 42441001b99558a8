#!/usr/bin/env bash
# Checkpoint parity across a refactor (issue #25): one tiny checkpoint per objective kind, written by the old code,
# evaluated (launch.evaluate) and sampled (launch.sample, fixed seed) by the old and the new code.
#   bash tests/parity/checkpoints.sh /tmp/old /tmp/p/old train    # train with the old commit's worktree
#   bash tests/parity/checkpoints.sh /tmp/old /tmp/p/old score    # its scores
#   mkdir -p /tmp/p/new && ln -s /tmp/p/old/runs /tmp/p/new/runs
#   bash tests/parity/checkpoints.sh "$PWD" /tmp/p/new score       # the new code's scores of the same checkpoints
#   diff -r /tmp/p/old/scores /tmp/p/new/scores                    # (the first line of a sample names its path)
# About 5 minutes on 2 CPU cores with a warm compilation cache.
set -uo pipefail
REPO=$1; OUT=$2; MODE=$3
cd "$REPO"
export JAX_PLATFORMS=cpu
TINY="--config.train.num_steps=30 --config.train.batch_size=8 --config.data.seq_len=32 --config.model.num_layers=2
 --config.model.width=64 --config.model.num_heads=2 --config.model.mlp_dim=176 --config.eval.every=30
 --config.eval.num_windows=16 --config.eval.batch_size=8 --config.train.sample_every=0 --config.train.checkpoint_every=30
 --config.train.log_every=10 --config.tensorboard=false --config.optimizer.warmup_steps=5"
declare -A ARGS
ARGS[elbo]=""
ARGS[masked_mean]="--config.diffusion.objective=masked_mean"
ARGS[autoregressive]="--config.diffusion.objective=autoregressive --config.model.causal=true"
ARGS[uniform]="--config.diffusion.objective=uniform --config.model.time_conditioning=true --config.sample.method=ancestral --config.sample.reveal_noise=0"
ARGS[duo]="--config.diffusion.objective=duo --config.diffusion.curriculum_steps=10 --config.model.time_conditioning=true --config.sample.method=ancestral --config.sample.reveal_noise=0"
ARGS[sedd]="--config.diffusion.objective=sedd --config.model.time_conditioning=true --config.sample.method=tweedie --config.sample.reveal_noise=0"
ARGS[embedding]="--config.diffusion.objective=embedding --config.model.time_conditioning=true --config.sample.method=ddim --config.sample.reveal_noise=0"
ARGS[hrm]="--config.model=hrm"
KINDS="elbo masked_mean autoregressive uniform duo sedd embedding"
mkdir -p "$OUT/runs" "$OUT/scores"
if [ "$MODE" = train ]; then
  for k in $KINDS; do
    python -m launch.train --config=configs/default.py --workdir="$OUT/runs/$k" $TINY ${ARGS[$k]} > "$OUT/runs/$k.log" 2>&1 || echo "FAILED $k"
  done
  python -m launch.distill --teacher_workdir="$OUT/runs/duo" --workdir="$OUT/runs/dcd" --teacher_steps=8 --rounds=2 --round_steps=5 > "$OUT/runs/dcd.log" 2>&1 || echo "FAILED dcd"
  THOUGHT_CONFIG=configs/thought_small.py  # (the wing's since the move: dlm_jax/proj/thought/configs/small.py)
  [ -f "$THOUGHT_CONFIG" ] || THOUGHT_CONFIG=dlm_jax/proj/thought/configs/small.py
  python -m launch.train --config="$THOUGHT_CONFIG:thought" --workdir="$OUT/runs/thought" \
    --config.train.num_steps=10 --config.train.batch_size=4 --config.model.num_layers=2 --config.model.width=64 \
    --config.model.num_heads=2 --config.model.mlp_dim=170 --config.eval.every=10 --config.eval.num_windows=8 \
    --config.eval.batch_size=4 --config.train.checkpoint_every=10 --config.tensorboard=false > "$OUT/runs/thought.log" 2>&1 || echo "FAILED thought"
  exit 0
fi
for k in $KINDS dcd thought; do
  # a thought run's thought mode was launch.sample's before the wing, is the wing's CLI since
  SAMPLE=launch.sample
  [ "$k" = thought ] && [ -f dlm_jax/proj/thought/sample.py ] && SAMPLE=dlm_jax.proj.thought.sample
  python -m launch.evaluate --workdir="$OUT/runs/$k" > "$OUT/scores/$k.eval" 2>&1 || echo "FAILED eval $k"
  python -m $SAMPLE --workdir="$OUT/runs/$k" --num_samples=3 --seed=3 --prompt="The " 2>&1 | grep -v "new tokens in" > "$OUT/scores/$k.sample" || echo "FAILED sample $k"
done
