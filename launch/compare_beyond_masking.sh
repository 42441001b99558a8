#!/usr/bin/env bash
# Masked diffusion vs Duo vs Duo + DCD vs SEDD (issue 12) vs continuous embedding diffusion (issue 15), at matched
# parameters, data and updates:
#   bash launch/compare_beyond_masking.sh [RUNS_DIR] [CONFIG]
# CONFIG defaults to configs/shakespeare_char_small.py (2 CPU cores: ~25 min of training, ~15 of evaluation); on a
# GPU with configs/shakespeare_char.py (more than one 10-minute device call: docs/gpu.md). Re-running continues:
# finished runs resume as finished, interrupted ones where they stopped.
# 1. trains the masked (":diffusion"), Duo (":duo"), SEDD (":sedd"), embedding (":embedding") and AR judge (":ar") arms;
# 2. distills the Duo run (launch.distill: Duo's DCD) and the masked run (SDTT): 5 rounds, T = 64 teacher steps, the
#    rounds splitting the arms' updates;
# 3. validation NELBO of each diffusion run (launch.evaluate, 32 antithetic time draws per window);
# 4. unconditional samples at 4, 8, 16, 32 and 64 steps, judged by the AR arm (launch.gen_eval: judge NLL, entropy).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs/beyond_masking}"
cfg="${2:-configs/shakespeare_char_small.py}"
mkdir -p "$runs"
train() {
  name=$1; arm=$2
  python -m launch.train --config="$cfg:$arm" --workdir="$runs/$name" --config.tensorboard=false \
    --config.sample.num_samples=0 >> "$runs/$name.log" 2>&1 || { echo "run $name failed, see $runs/$name.log" >&2; exit 1; }
}
train diffusion diffusion
train duo duo
train sedd sedd
train embedding embedding
train ar ar
steps=$(python -c "import importlib.util as u; s = u.spec_from_file_location('c', '$cfg'); m = u.module_from_spec(s); \
s.loader.exec_module(m); print(int(m.get_config('duo').train.num_steps))")
python -m launch.distill --teacher_workdir="$runs/duo" --workdir="$runs/duo_dcd" --teacher_steps=64 --rounds=5 \
  --round_steps=$((steps / 5)) >> "$runs/duo_dcd.log" 2>&1 || { echo "distillation failed, see $runs/duo_dcd.log" >&2; exit 1; }
# SDTT (self-distillation through time) of the masked arm, the same rounds: the masked side of the few-step table
python -m launch.distill --teacher_workdir="$runs/diffusion" --workdir="$runs/diffusion_sdtt" --teacher_steps=64 \
  --rounds=5 --round_steps=$((steps / 5)) >> "$runs/diffusion_sdtt.log" 2>&1 \
  || { echo "distillation failed, see $runs/diffusion_sdtt.log" >&2; exit 1; }
# Each run with its config's sampler (masked: confidence; Duo: ancestral; SEDD: Tweedie), plus the masked run's
# ancestral sampler (MDLM's; what the Duo paper's table compares with), Duo's greedy refinement and, for the embedding
# arm (DDIM by default), the ancestral DDPM step.
for name in diffusion diffusion_sdtt duo duo_dcd sedd embedding; do
  echo "## $name"
  python -m launch.evaluate --workdir="$runs/$name" --time_samples=32
  python -m launch.gen_eval --workdir="$runs/$name" --judge="$runs/ar" --prompt_len=0 --num_samples=64 \
    --steps=4,8,16,32,64
  case $name in
    diffusion|diffusion_sdtt) extra=ancestral ;;
    duo|duo_dcd) extra=greedy ;;
    embedding) extra=ddpm ;;
    *) extra= ;;
  esac
  if [ -n "$extra" ]; then
    echo "## $name, method=$extra"
    python -m launch.gen_eval --workdir="$runs/$name" --judge="$runs/ar" --prompt_len=0 --num_samples=64 \
      --steps=4,8,16,32,64 --method=$extra
  fi
done 2>&1 | tee "$runs/compare.log"
