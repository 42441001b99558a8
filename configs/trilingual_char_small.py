"""Seed 001 §10.5 at CPU scale: one character model for English, Hindi (Devanagari) and Hinglish (Roman script).

configs/indic_char_small.py's data (Hindi Wikipedia + the four Hinglish training sets) plus English (Tiny Shakespeare,
1.1M characters), so the model sees all three languages; EcoHybrid ("eco": width 128, 4 layers, 16 slots, 0.8M
parameters), context 128, batch 16, 1000 steps (2.05M training characters, under half an epoch).
  valid: English en/wikitext2_valid.tokens.txt (modern Wikipedia prose: English out of the training domain, the only
         held-out English the corpora offer besides Shakespeare's own tail), Hindi hi/valid_flores_ntrex.txt,
         Hinglish hinglish/lince_mt_dev.txt + hinglish/cmdialog_dev.txt. The character alphabet comes from the train +
         valid text, so every validation file is scored without out-of-vocabulary characters.
Arms: "eco" (the denoiser every variant shares) and "ar" (causal transformer: the judge of generated text). The
variants of the comparison are command-line overrides of "eco" (launch/compare_script_aware.sh):
  --config.diffusion.corruption=script_aware | span, --config.model.retrieval_slots=4, --config.seed=1 ...
All of it, with the table: bash launch/compare_script_aware.sh
"""
from configs import indic_char_small

ENGLISH_TRAIN = "en/tinyshakespeare.txt"
ENGLISH_VALID = "en/wikitext2_valid.tokens.txt"


def get_config(arm: str = "eco"):
  if arm not in ("eco", "ar"):
    raise ValueError(f"configs/trilingual_char_small.py takes 'eco' or 'ar', got {arm!r}.")
  c = indic_char_small.get_config(arm)
  c.data.path = f"{indic_char_small.TRAIN_PATHS},{ENGLISH_TRAIN}"
  c.data.valid_path = f"{ENGLISH_VALID},{indic_char_small.HINDI_VALID},{indic_char_small.HINGLISH_VALID}"
  return c
