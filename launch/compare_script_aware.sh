#!/usr/bin/env bash
# Seed 001 §10.5 as one command (configs/trilingual_char_small.py): EcoHybrid trained on English + Hindi + Hinglish
# under each VARIANT and SEED, then per run the validation NELBO per language (token-level masked NELBO, whatever the
# training corruption) and the script-consistency error of samples prompted in Hindi (Devanagari), Hinglish (Roman)
# and mixed script, judged by an AR arm; the table gives the mean over seeds and each seed's value.
#   bash launch/compare_script_aware.sh [RUNS_DIR] [VARIANT ...]
# Variants: uniform (token-by-token masking), script_aware (grapheme clusters), script_aware_mix (half the sequences
# by clusters, half token by token: diffusion.unit_fraction=0.5), span (words), retrieval (retrieval-conditioned
# memory slots, uniform masking). Default: uniform script_aware script_aware_mix retrieval. SEEDS="0 1" by
# default. A finished run returns at once and an interrupted one resumes, so a rerun only adds what is missing.
# About 5 minutes per training run and 4 per evaluation on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-runs/script_aware}"
shift || true
[ $# -gt 0 ] && variants=("$@") || variants=(uniform script_aware script_aware_mix retrieval)
seeds="${SEEDS:-0 1}"
cfg=configs/trilingual_char_small.py
english=en/wikitext2_valid.tokens.txt
hindi=hi/valid_flores_ntrex.txt
hinglish=hinglish/lince_mt_dev.txt,hinglish/cmdialog_dev.txt
results="$runs/results.jsonl"
mkdir -p "$runs"
train() {  # train NAME ARGS...: train (or resume) $runs/NAME
  local name=$1; shift
  python -m launch.train --config=$cfg:"$@" --workdir="$runs/$name" --config.tensorboard=false \
    >> "$runs/$name.log" 2>&1 || { echo "run $name failed, see $runs/$name.log" >&2; exit 1; }
}
overrides() {
  case $1 in
    uniform) echo "--config.diffusion.corruption=uniform" ;;
    script_aware) echo "--config.diffusion.corruption=script_aware" ;;
    script_aware_mix) echo "--config.diffusion.corruption=script_aware --config.diffusion.unit_fraction=0.5" ;;
    span) echo "--config.diffusion.corruption=span" ;;
    retrieval) echo "--config.model.retrieval_slots=4" ;;
    *) echo "unknown variant $1 (uniform, script_aware, script_aware_mix, span, retrieval)" >&2; exit 2 ;;
  esac
}
train ar ar
for seed in $seeds; do
  for variant in "${variants[@]}"; do
    train "${variant}_s$seed" eco $(overrides "$variant") --config.seed=$seed --config.data.seed=$seed
  done
done
for seed in $seeds; do
  for variant in "${variants[@]}"; do
    run="$runs/${variant}_s$seed"
    if grep -q "\"run\": \"$run\"" "$results" 2>/dev/null; then continue; fi
    tmp="$run.results.tmp"
    : > "$tmp"
    for lang in english hindi hinglish; do
      python -m launch.evaluate --workdir="$run" --path="${!lang}" --num_windows=500 --time_samples=8 \
        | python -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'run': '$run', 'variant': '$variant',
'seed': $seed, 'metric': 'nelbo_$lang', 'value': r['nats_per_token']}))" >> "$tmp"
    done
    for prompts in "deva $hindi" "latn $hinglish" "mixed $hindi,$hinglish"; do
      set -- $prompts
      python -m launch.gen_eval --workdir="$run" --judge="$runs/ar" --path="$2" --prompt_scripts="$1" \
        --num_samples=48 --steps=32 --json | grep '^{' | python -c "
import json, sys
for line in sys.stdin:
  r = json.loads(line)
  kind = 'real' if r['steps'] == 'n/a' else 'model'
  for key in ('script_error_rate', 'judge_nll'):
    print(json.dumps({'run': '$run', 'variant': '$variant' if kind == 'model' else 'real text', 'seed': $seed,
                      'metric': f'{key}_$1', 'value': r[key]}))" >> "$tmp"
    done
    cat "$tmp" >> "$results" && rm "$tmp"
  done
done
python -m launch.script_table "$results"
