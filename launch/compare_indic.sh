#!/usr/bin/env bash
# Script-aware comparison at CPU scale (configs/indic_char_small.py): the baseline, EcoHybrid and HRM
# denoisers and the AR arm trained on Hindi (Devanagari) + Hinglish (Roman) at matched parameters and tokens; then
# validation NELBO per language and generation quality (AR-judged NLL, entropy, script errors) of each diffusion arm
# prompted in each language, over the decode-step sweep {16, 32, 96}. About 45 minutes on 2 cores.
#   bash launch/compare_indic.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs/indic}"
cfg=configs/indic_char_small.py
hindi=hi/valid_flores_ntrex.txt
hinglish=hinglish/lince_mt_dev.txt,hinglish/cmdialog_dev.txt
mkdir -p "$runs"
for arm in diffusion ar eco hrm; do  # a finished run returns at once; an interrupted one resumes
  python -m launch.train --config=$cfg:$arm --workdir="$runs/$arm" --config.tensorboard=false \
    >> "$runs/$arm.log" 2>&1 || { echo "run $arm failed, see $runs/$arm.log" >&2; exit 1; }
done
echo "## Training"
python -m launch.summarize "$runs"/diffusion "$runs"/ar "$runs"/eco "$runs"/hrm
echo
echo "## Validation NELBO per language (nats/char; AR: exact NLL)"
echo "| run | Hindi (FLORES + NTREX) | Hinglish (LinCE + CM-Dialog dev) |"
echo "|---|---|---|"
for arm in diffusion ar eco hrm; do
  row="| $arm |"
  for path in $hindi $hinglish; do
    nats=$(python -m launch.evaluate --workdir="$runs/$arm" --path=$path --num_windows=1000 --time_samples=8 \
           | python -c "import json,sys; print(f\"{json.load(sys.stdin)['nats_per_token']:.4f}\")")
    row="$row $nats |"
  done
  echo "$row"
done
echo
echo "## Generation quality (judge: the AR arm)"
for arm in diffusion eco hrm; do
  python -m launch.gen_eval --workdir="$runs/$arm" --judge="$runs/ar" --path=$hindi --label=Hindi --steps=16,32,96
  python -m launch.gen_eval --workdir="$runs/$arm" --judge="$runs/ar" --path=$hinglish --label=Hinglish \
    --steps=16,32,96
done
