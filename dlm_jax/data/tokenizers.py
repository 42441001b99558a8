"""Character and SentencePiece tokenizers with the reserved ids of `dlm_jax.special_tokens`.

Both serialize to a small JSON-able dict (`to_dict` / `from_dict`) that every checkpoint carries, so a run can always
be sampled with exactly the tokenizer it was trained with.
"""
from __future__ import annotations

import base64
import collections
import functools
import hashlib
import json
import os
import pathlib
import re
import tempfile

import numpy as np

from dlm_jax import special_tokens
from dlm_jax.data import corpus, segmentation

MASK_GLYPH = "\u2591"  # how the streaming view and notebooks draw a masked position
OOV_POLICIES = ("error", "unk", "skip")  # what a character tokenizer does with characters outside its alphabet


class TokenizerError(ValueError):
  """A text or checkpoint that does not fit the tokenizer; the message says which and what to do."""


class CharTokenizer:
  """One id per Unicode code point of an alphabet built from the corpus; ids NUM_SPECIAL.. in sorted order."""
  kind = "char"

  def __init__(self, alphabet: str):
    if len(set(alphabet)) != len(alphabet):
      raise TokenizerError("Character alphabet has duplicates.")
    self.alphabet = "".join(sorted(alphabet))
    self._lookup = np.full(max(map(ord, self.alphabet), default=0) + 1, -1, np.int32)
    for i, ch in enumerate(self.alphabet):
      self._lookup[ord(ch)] = special_tokens.NUM_SPECIAL + i

  @classmethod
  def from_texts(cls, texts) -> "CharTokenizer":
    chars = set()
    for text in texts:
      chars.update(text)
    return cls("".join(chars))

  @property
  def vocab_size(self) -> int:
    return special_tokens.NUM_SPECIAL + len(self.alphabet)

  def _ids_or_minus_one(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
    return np.where(codes < len(self._lookup), self._lookup[np.minimum(codes, len(self._lookup) - 1)], -1)

  def oov_counts(self, text: str) -> collections.Counter:
    """How often each character outside the alphabet occurs in `text`."""
    ids = self._ids_or_minus_one(text)
    return collections.Counter(text[i] for i in np.flatnonzero(ids < 0).tolist())

  def encode(self, text: str, source: str = "text", oov: str = "error") -> np.ndarray:
    """Ids of `text`. Characters outside the alphabet (out of vocabulary): `oov="error"` (the default, and what
    training uses) raises a TokenizerError listing every distinct one with its count; "unk" maps each to the UNK id;
    "skip" drops them."""
    if oov not in OOV_POLICIES:
      raise TokenizerError(f"Unknown out-of-vocabulary policy {oov!r}; choose one of {OOV_POLICIES}.")
    ids = self._ids_or_minus_one(text)
    if np.any(ids < 0):
      if oov == "unk":
        ids = np.where(ids < 0, special_tokens.UNK, ids)
      elif oov == "skip":
        ids = ids[ids >= 0]
      else:
        counts = self.oov_counts(text)
        shown = ", ".join(f"{ch!r} (U+{ord(ch):04X}) x{n}" for ch, n in counts.most_common(30))
        more = f", and {len(counts) - 30} more" if len(counts) > 30 else ""
        raise TokenizerError(
            f"{source}: {sum(counts.values())} characters of {len(counts)} kinds are not in the character tokenizer's "
            f"alphabet of {len(self.alphabet)} characters (built from the training corpus): {shown}{more}. Remove "
            "them, train on a corpus that contains them, or (python -m launch.evaluate) score the text with --oov=unk "
            "(each becomes <unk>) or --oov=skip (they are dropped).")
    return ids.astype(np.int32)

  def decode(self, ids, mask_glyph: str = MASK_GLYPH) -> str:
    out = []
    for i in np.asarray(ids).tolist():
      if i >= special_tokens.NUM_SPECIAL:
        out.append(self.alphabet[i - special_tokens.NUM_SPECIAL])
      elif i == special_tokens.MASK:
        out.append(mask_glyph)
      elif i == special_tokens.EOS:
        out.append("\n")
    return "".join(out)

  def to_dict(self) -> dict:
    return {"kind": self.kind, "alphabet": self.alphabet}

  def pieces(self) -> list:
    """Each id's text: None for the special ids, then one character per id."""
    return [None] * special_tokens.NUM_SPECIAL + list(self.alphabet)

  @functools.cache
  def token_classes(self):
    """The grapheme-boundary and script tables of every id (data/segmentation.py), built once."""
    return segmentation.TokenClasses.from_pieces(self.pieces())


SPM_SPACE = "\u2581"  # SentencePiece's whitespace symbol: in a text it would decode as a space
SPM_ESCAPE = "\ue000"  # private use: escapes SPM_SPACE (and itself) around SentencePiece


def escape_spm_space(text: str) -> str:
  """U+E000 -> U+E000 "e", U+2581 -> U+E000 "b": a text SentencePiece maps back to itself (byte fallback covers
  U+E000)."""
  return text.replace(SPM_ESCAPE, SPM_ESCAPE + "e").replace(SPM_SPACE, SPM_ESCAPE + "b")


def unescape_spm_space(text: str) -> str:
  """The inverse of `escape_spm_space` (a lone U+E000, e.g. cut off by a mask, is left as it is)."""
  return re.sub(SPM_ESCAPE + "([eb])", lambda m: SPM_ESCAPE if m.group(1) == "e" else SPM_SPACE, text)


class SentencePieceTokenizer:
  """A SentencePiece model (trained by `python -m launch.tokenizer`) held as its serialized proto.

  Every UTF-8 text round-trips exactly: byte fallback and identity normalization keep every character, and U+2581
  (SentencePiece's own whitespace symbol, which would come back as a space) is escaped with the private-use U+E000
  before encoding and unescaped after decoding (`escape_spm_space`)."""
  kind = "sentencepiece"

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm
    self.model_proto = model_proto
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
    expected = {special_tokens.PAD: "pad", special_tokens.BOS: "bos", special_tokens.EOS: "eos",
                special_tokens.UNK: "unk"}
    actual = {self.processor.pad_id(): "pad", self.processor.bos_id(): "bos", self.processor.eos_id(): "eos",
              self.processor.unk_id(): "unk"}
    if actual != expected or self.processor.id_to_piece(special_tokens.MASK) != special_tokens.NAMES[
        special_tokens.MASK]:
      raise TokenizerError(
          "This SentencePiece model does not use dlm_jax's reserved ids (pad 0, bos 1, eos 2, <mask> 3, unk 4); "
          "train it with `python -m launch.tokenizer`.")

  @classmethod
  def from_file(cls, path: str) -> "SentencePieceTokenizer":
    if not os.path.isfile(path):
      raise TokenizerError(f"SentencePiece model {path!r} does not exist (config data.tokenizer_path); "
                           "train one with `python -m launch.tokenizer --input=... --output=...`.")
    with open(path, "rb") as f:
      return cls(f.read())

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  def oov_counts(self, text: str) -> collections.Counter:
    """Empty: with byte fallback every character has pieces."""
    del text
    return collections.Counter()

  def encode(self, text: str, source: str = "text", oov: str = "error") -> np.ndarray:
    del source, oov  # byte fallback: nothing is out of vocabulary
    return np.asarray(self.processor.encode(escape_spm_space(text), out_type=int), np.int32)

  def decode(self, ids, mask_glyph: str = MASK_GLYPH) -> str:
    """Decodes runs of ordinary ids with SentencePiece; a mask id is drawn as `mask_glyph`, EOS as a newline."""
    out, run = [], []
    for i in np.asarray(ids).tolist():
      if i in (special_tokens.MASK, special_tokens.EOS):
        out.append(unescape_spm_space(self.processor.decode(run)))
        run = []
        out.append(mask_glyph if i == special_tokens.MASK else "\n")
      elif i not in (special_tokens.PAD, special_tokens.BOS):
        run.append(i)
    out.append(unescape_spm_space(self.processor.decode(run)))
    return "".join(out)

  def to_dict(self) -> dict:
    return {"kind": self.kind, "model_proto_b64": base64.b64encode(self.model_proto).decode("ascii")}

  def pieces(self) -> list:
    """Each id's text, as segmentation.TokenClasses.from_pieces reads it: None for control, unknown and special ids,
    a piece with U+2581 read as a space, a byte-fallback piece "<0xNN>" as its ASCII character, or b"" for one byte of
    a multi-byte character (GB_BYTE)."""
    processor, pieces = self.processor, []
    for i in range(self.vocab_size):
      if processor.is_control(i) or processor.is_unknown(i) or i < special_tokens.NUM_SPECIAL:
        pieces.append(None)
      elif processor.is_byte(i):
        value = int(processor.id_to_piece(i)[1:-1], 16)
        pieces.append(chr(value) if value < 0x80 else b"")
      else:
        pieces.append(unescape_spm_space(processor.id_to_piece(i).replace(SPM_SPACE, " ")))
    return pieces

  @functools.cache
  def token_classes(self):
    """The grapheme-boundary and script tables of every id (data/segmentation.py), built once."""
    return segmentation.TokenClasses.from_pieces(self.pieces())


def from_dict(spec: dict):
  if spec["kind"] == CharTokenizer.kind:
    return CharTokenizer(spec["alphabet"])
  if spec["kind"] == SentencePieceTokenizer.kind:
    return SentencePieceTokenizer(base64.b64decode(spec["model_proto_b64"]))
  raise TokenizerError(f"Unknown tokenizer kind {spec['kind']!r} in checkpoint.")


def fingerprint(tokenizer) -> str:
  return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def train_sentencepiece_to_file(input_spec: str, output, vocab_size: int, model_type: str = "bpe",
                                input_sentence_size: int = 2_000_000, flag: str = "--input") -> "SentencePieceTokenizer":
  """Trains SentencePiece on the files/folders of `input_spec` (resolved like data.path; each checked for valid
  UTF-8 first, so a bad file gets one clear error before SentencePiece sees it) and writes the model to `output`
  atomically (temporary file + rename). Returns the tokenizer, its reserved ids checked."""
  files = corpus.resolve(input_spec, flag)
  for f in files:
    corpus.read_utf8(f)
  proto = train_sentencepiece([str(f) for f in files], vocab_size, model_type, input_sentence_size=input_sentence_size)
  tokenizer = SentencePieceTokenizer(proto)
  out = pathlib.Path(output)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(out.suffix + f".tmp{os.getpid()}")
  tmp.write_bytes(proto)
  os.replace(tmp, out)
  return tokenizer


def train_sentencepiece(input_files, vocab_size: int, model_type: str = "bpe", character_coverage: float = 1.0,
                        max_sentence_length: int = 16384, input_sentence_size: int = 2_000_000,
                        seed_sentencepiece_size: int = 1_000_000) -> bytes:
  """Trains SentencePiece with byte fallback and identity normalization (exact round trip for English, Devanagari
  with nukta forms, and romanized Hinglish: nmt_nfkc would rewrite some of them) and dlm_jax's reserved ids."""
  import sentencepiece as spm
  with tempfile.TemporaryDirectory() as tmp:
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        input=",".join(input_files), model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, hard_vocab_limit=False,
        pad_id=special_tokens.PAD, bos_id=special_tokens.BOS, eos_id=special_tokens.EOS, unk_id=special_tokens.UNK,
        control_symbols=[special_tokens.NAMES[special_tokens.MASK]], max_sentence_length=max_sentence_length,
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size, minloglevel=2, num_threads=os.cpu_count() or 1)
    with open(prefix + ".model", "rb") as f:
      return f.read()
