"""Reserved token ids, in one place for every tokenizer, model and sampler.

| id | name | role |
|----|------|------|
| 0  | PAD  | padding (never produced by the corpus pipeline, which crops a continuous token stream) |
| 1  | BOS  | beginning of a document / prompt marker |
| 2  | EOS  | end of a document: the pipeline inserts it between the documents (files) of a corpus |
| 3  | MASK | the absorbing state of masked diffusion; the denoiser never predicts it (SUBS) |
| 4  | UNK  | SentencePiece's unknown piece (byte fallback makes it unused in practice) |

Ordinary tokens start at NUM_SPECIAL = 5: a character tokenizer maps its alphabet to 5, 6, ...; SentencePiece is
trained with exactly these ids (pad_id=0, bos_id=1, eos_id=2, unk_id=4 and <mask> as control symbol 3).
"""
PAD = 0
BOS = 1
EOS = 2
MASK = 3
UNK = 4
NUM_SPECIAL = 5
NAMES = ("<pad>", "<s>", "</s>", "<mask>", "<unk>")
# Never data tokens, so never sampled (the samplers remove their logits); EOS may be generated (document boundary).
NEVER_SAMPLED = (PAD, BOS, MASK, UNK)
