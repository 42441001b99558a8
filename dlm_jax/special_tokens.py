"""Special token ids: a property of the tokenizer (`tokenizer.special`), read from it by every model, objective and
sampler.

`SpecialIds` names the five roles:

| role | used for |
|------|----------|
| pad  | padding: the padded layout's filler (never scored) and the positions a sampler closes after an EOS |
| bos  | beginning of a document / prompt marker |
| eos  | end of a document: the pipeline puts it between documents; a sampler may generate it (variable length) |
| mask | the absorbing state of masked diffusion; the denoiser never predicts it (SUBS) |
| unk  | an unknown token (None where the tokenizer has none) |

`never_sampled` = {pad, bos, mask, unk} less eos: the ids that are never data tokens, whose logits the samplers remove.
(GPT-2 uses one id, <|endoftext|>, as bos, eos and unk; that id is EOS, so it stays drawable.)

Our character and SentencePiece tokenizers reserve ids 0..4 (`DEFAULT`: pad 0, bos 1, eos 2, mask 3, unk 4) and start
ordinary tokens at NUM_SPECIAL = 5: the character tokenizer maps its alphabet to 5, 6, ...; SentencePiece is trained
with exactly these ids (pad_id=0, bos_id=1, eos_id=2, unk_id=4 and <mask> as control symbol 3). A Hugging Face tokenizer
(`data.tokenizer = "hf:PATH"`, data/tokenizers.py) keeps its own ids and takes a mask (and a pad) id past its
vocabulary when it has none (MDLM's GPT-2 setting), so its ids can meet a pretrained checkpoint's embedding rows.

The module constants below are `DEFAULT`'s ids: the character and SentencePiece tokenizers' definition, and what tests
of a bare denoiser use. Library code past the tokenizer reads `tokenizer.special` (or the `special` / `mask_id` its
caller built from it) instead; tests/test_layout.py keeps it so.
"""
from __future__ import annotations

import dataclasses

PAD = 0
BOS = 1
EOS = 2
MASK = 3
UNK = 4
NUM_SPECIAL = 5
NAMES = ("<pad>", "<s>", "</s>", "<mask>", "<unk>")
ROLES = ("pad", "bos", "eos", "mask", "unk")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The special ids of one tokenizer (frozen and hashable: a static part of jitted samplers' configs)."""
  pad: int = PAD
  bos: int = BOS
  eos: int = EOS
  mask: int = MASK
  unk: int | None = UNK

  def __post_init__(self):
    for role in ROLES:
      value = getattr(self, role)
      if value is None and role != "unk":
        raise ValueError(f"SpecialIds.{role} must be an id, got None (only unk may be absent).")
      if value is not None and (not isinstance(value, int) or value < 0):
        raise ValueError(f"SpecialIds.{role} must be an int >= 0, got {value!r}.")
    if self.mask in (self.pad, self.bos, self.eos) or (self.unk is not None and self.mask == self.unk):
      raise ValueError(f"The mask id must be an id of its own; got {self}.")

  @property
  def never_sampled(self) -> tuple[int, ...]:
    """{pad, bos, mask, unk} less eos, sorted: the ids a sampler never draws."""
    ids = {self.pad, self.bos, self.mask} | ({self.unk} if self.unk is not None else set())
    return tuple(sorted(ids - {self.eos}))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, spec: dict) -> "SpecialIds":
    return cls(**{role: spec[role] for role in ROLES})


DEFAULT = SpecialIds()
# Never data tokens, so never sampled (the samplers remove their logits); EOS may be generated (document boundary).
NEVER_SAMPLED = DEFAULT.never_sampled


# Conditioning positions of a training window (data.layout="chat": the prompt of an SFT example; the per-example
# generalization of diffusion.prompt_length): the window's int32 ids carry this bit where the token is given, never
# corrupted nor scored. Every vocabulary is far below 2^30 ids. The objectives read and clear it
# (`Objective.split_condition`); the samplers never see it (they take a `fixed` mask).
FIXED_FLAG = 1 << 30


def mark_fixed(ids, fixed):
  """`ids` with FIXED_FLAG set where `fixed` (numpy or jax int32 arrays)."""
  return ids | (fixed.astype(ids.dtype) * FIXED_FLAG)


def split_fixed(ids):
  """(the ids without the flag, bool: where it was set)."""
  return ids & (FIXED_FLAG - 1), ids >= FIXED_FLAG
