"""LM1B as MDLM trains and scores it (Sahoo et al. 2024, Table 1; BD3-LM, Arriola et al. 2025, Table 3).

Paper figures (test perplexity, bert-base-uncased tokens, context 128): MDLM <= 27.04 after 33B tokens (<= 23.00
after 327B); AR 22.32 at 33B (MDLM's own AR baseline, same backbone). BENCHMARKS.md, "Against the papers".

Data:  the One Billion Word benchmark (Chelba et al. 2013): its 99 training shards and the held-out shard MDLM scores
       as test, each a file of one sentence per line. Prepare both once with bert-base-uncased's tokenizer (one
       sentence = one document: convert each shard to .jsonl, {"text": line}, or keep lines as files):
         python -m launch.prepare_data --input='lm1b/train/*.jsonl' --tokenizer=hf:tok/bert-base-uncased \\
             --output=data/lm1b_train
         python -m launch.prepare_data --input=lm1b/heldout.jsonl --tokenizer=hf:tok/bert-base-uncased \\
             --output=data/lm1b_test
       (tok/bert-base-uncased: `AutoTokenizer.from_pretrained("bert-base-uncased").save_pretrained(...)`, or its
       tokenizer.json and tokenizer_config.json.) Its ids: [PAD] 0, [UNK] 100, [CLS] 101 (bos), [SEP] 102 (eos),
       [MASK] 103 (the mask), 30,522 in all.
       Layout "padded" (MDLM's data/lm1b.yaml: wrap False): each window is [CLS] sentence [SEP] then [PAD] to 128,
       a longer sentence cut; padding is never masked nor scored, and perplexity is per token that is not padding.
Model: MDLM's "small" DiT size: 12 layers, 12 heads, width 768, dropout 0.1, rotary positions (ours: pre-norm
       RMSNorm and SwiGLU 2048 where the DiT has LayerNorm and GELU 3072: the same parameter count), ~110M parameters
       with the 30,522 x 768 embedding; no time conditioning (MDLM's config: time_conditioning False).
Recipe: MDLM's: log-linear schedule, continuous-time NELBO, AdamW lr 3e-4 after 2,500 warmup steps then constant
       (optimizer.min_lr_ratio 1.0), b2 0.999, no weight decay, gradient clip 1.0, EMA 0.9999, batch 512; 33B tokens
       = 500,000 steps of 512 x 128 (65,536 token positions each, padding included).
Eval:  every token of a window, [CLS] included (eval.score_all_tokens, MDLM's NELBO); perplexity = exp(nats/token).
Compute: 6 N T = 6 x 110M x 3.3e10 = 2.2e19 FLOPs: about 15 hours on one H100 at 40% MFU.

Arms:  "diffusion" (default), "ar" (the same backbone, causal; scores tokens 2..128 given [CLS]), "wrapped" (MDLM's
       lm1b-wrap variant: sentences joined by [SEP], random 128-token windows; compare it with wrapped rows only),
       "tiny" (the same protocol at test size: 2 layers x 32, 8 steps; the tests run it on a BERT-layout tokenizer
       and corpus trained and prepared in the test).

Commands:
  python -m launch.train --config=configs/lm1b.py --workdir=runs/lm1b
  python -m launch.evaluate --workdir=runs/lm1b --num_windows=1000000 --time_samples=4   # data.valid_path: the test set
"""
from configs import default

ARMS = ("diffusion", "ar", "wrapped", "tiny")


def get_config(arm: str = "diffusion"):
  if arm not in ARMS:
    raise ValueError(f"configs/lm1b.py takes one of {ARMS}, got {arm!r}.")
  c = default.base_config()
  c.data.path = "data/lm1b_train"
  c.data.valid_path = "data/lm1b_test"
  c.data.tokenizer = "hf:tok/bert-base-uncased"
  c.data.seq_len = 128
  c.data.layout = "padded"

  default.mdlm_recipe(c, num_steps=500_000)  # 33B token positions of 512 x 128
  c.eval.num_windows = 4096
  c.eval.batch_size = 256

  if arm == "wrapped":
    c.data.layout = "wrapped"
  if arm == "ar":
    default.causal_arm(c)
  if arm == "tiny":
    default.tiny_arm(c)
  return c
