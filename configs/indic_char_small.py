"""Script-aware comparison at CPU scale: one character model per denoiser on Hindi + Hinglish.

Each arm trains on Hindi in Devanagari and Hinglish in Roman script mixed in one stream, so the same model must keep
to the script it is prompted in: the Hindi/Hinglish quality by which EcoHybrid must match the baseline to become the
primary denoiser (the decision rule in BENCHMARKS.md).
  train: hi/dakshina_wiki.txt (2.37M characters of Hindi Wikipedia) + the four Hinglish training files (1.95M:
         PHINC, LinCE MT train, Hinglish-TOP, CM-Dialog train), as the data README suggests for each language;
  valid: hi/valid_flores_ntrex.txt + hinglish/lince_mt_dev.txt + hinglish/cmdialog_dev.txt (scored per language with
         `python -m launch.evaluate --path=...`; the in-training eval spreads its windows over all three files).
Models: configs/shakespeare_char_small.py's arms (width 128, 4 layers or 2 L + 2 H, matched parameters), context 128,
batch 16, 1000 steps (2.05M training characters, about half an epoch). The character alphabet (~400 characters:
Devanagari, Latin, punctuation, a few others) comes from the train + valid text, as in every dlm_jax char run.
Arms: "diffusion", "ar" (causal; the judge of generation quality), "eco", "hrm", and "embedding" (continuous
embedding diffusion, configs/default.beyond_masking_arm: the steered embedding sampler of launch/control.py). The four
denoisers' comparison, then the tables:
  bash launch/compare_indic.sh
Hardware: CPU, 2 cores: 4-7 minutes per arm (EcoHybrid fastest, HRM slowest), about 27 minutes for the four.
Expected (seed 0, 98c6d1d): validation NELBO Hindi / Hinglish in nats/char: baseline 2.889 / 3.029, EcoHybrid
2.862 / 2.701, HRM 2.925 / 2.759, AR 1.993 / 1.676 (a second seed moves an arm by up to 0.27 on Hinglish).
Results: BENCHMARKS.md, "Hindi and Hinglish (CPU scale)".
"""
from configs import shakespeare_char_small

TRAIN_PATHS = ("hi/dakshina_wiki.txt,hinglish/phinc.txt,hinglish/lince_mt_train.txt,"
               "hinglish/hinglish_top_train_valid.txt,hinglish/cmdialog_train.txt")
HINDI_VALID = "hi/valid_flores_ntrex.txt"
HINGLISH_VALID = "hinglish/lince_mt_dev.txt,hinglish/cmdialog_dev.txt"


def get_config(arm: str = "diffusion"):
  if arm not in ("diffusion", "ar", "eco", "hrm", "embedding"):
    raise ValueError(f"configs/indic_char_small.py takes 'diffusion', 'ar', 'eco', 'hrm' or 'embedding', got {arm!r}.")
  c = shakespeare_char_small.get_config(arm)
  c.data.path = TRAIN_PATHS
  c.data.valid_path = f"{HINDI_VALID},{HINGLISH_VALID}"
  c.train.num_steps = 1000
  c.optimizer.warmup_steps = 50  # its tables' recipe (shakespeare_char_small: 150 since issue #31, not measured here)
  c.train.checkpoint_every = 500
  c.eval.every = 500
  c.eval.windows = "spread"
  return c
