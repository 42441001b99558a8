"""The tokenizers: character and SentencePiece, with the reserved ids 0..4 of `dlm_jax.special_tokens`
(`special_tokens.DEFAULT`), and Hugging Face tokenizers (`HFTokenizer`, data.tokenizer="hf:PATH") with their own ids.

A tokenizer has: `kind`, `vocab_size`, `special` (its `special_tokens.SpecialIds`), `encode(text, source, oov)`,
`encode_batch(texts, oov, source)`, `decode(ids, mask_glyph)`, `oov_counts(text)`, `pieces()`, `token_classes()` and
`to_dict()`.
Each serializes to a small JSON-able dict (`to_dict` / `from_dict`) that every checkpoint carries, so a run can always
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
  special = special_tokens.DEFAULT

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

  def encode_batch(self, texts, oov: str = "error", source: str = "text") -> list:
    """`encode` of each text (an error names `source` and the text's index)."""
    return [self.encode(text, source=f"{source} (document {i})", oov=oov) for i, text in enumerate(texts)]

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
  special = special_tokens.DEFAULT

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

  def encode_batch(self, texts, oov: str = "error", source: str = "text") -> list:
    """`encode` of each text, in one SentencePiece call (its own threads)."""
    del oov, source
    ids = self.processor.encode([escape_spm_space(text) for text in texts], out_type=int)
    return [np.asarray(row, np.int32) for row in ids]

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


# Hugging Face tokenizers (`data.tokenizer = "hf:PATH"`): a local `tokenizer.json`, or a tokenizer folder holding
# one, read with the `tokenizers` library (Rust, no torch, no network): GPT-2's byte-level BPE, bert-base-uncased's
# WordPiece, LLaMA's and Qwen's tokenizers, or one trained here.
#
# **Special ids** (`HFTokenizer.special`, a `special_tokens.SpecialIds`) are the tokenizer's own, so that token ids can
# meet a pretrained checkpoint's embedding rows. Each role is read, in order, from the folder's `tokenizer_config.json`
# and `special_tokens_map.json` (`bos_token`, `eos_token`, `pad_token`, `mask_token`, `unk_token`, and `cls_token` /
# `sep_token`), else from the tokenizer's special tokens by their conventional names (`HF_ROLE_NAMES`). Then, as MDLM's
# data pipeline does for the tokenizers it uses:
#
# * bos falls back to cls, then to eos (GPT-2: <|endoftext|> is both); eos falls back to sep, then to bos (BERT: [CLS]
#   starts and [SEP] ends a document). A tokenizer with neither is refused: documents need a separator.
# * pad, if absent, is a new id past the vocabulary (MDLM adds "[PAD]" to GPT-2); then mask, if absent, is the next one
#   (MDLM's mask_index = vocab_size for GPT-2). bert-base-uncased keeps its own [PAD] 0 and [MASK] 103.
#
# `vocab_size` counts those new ids (GPT-2: 50257 + pad + mask = 50259); the model's embedding has a row for each.
#
# **Encoding** never adds the tokenizer's template tokens ([CLS] ... [SEP]): the pipeline joins documents with EOS
# itself. `encode_batch` runs the Rust batch encoder on all cores. A byte-level BPE round-trips every text exactly
# (`decode(encode(text)) == text`); WordPiece lowercases, strips accents and re-spaces punctuation by design, so its
# text does not come back, but its ids do (`encode(decode_exact(ids)) == ids`): both are tested on the held-in corpora.
# An encoder that cannot spell a piece gives its unknown token, as the papers' runs score it.
HF_PREFIX = "hf:"
HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# Conventional names of each role's token, tried in order when no config file names it.
HF_ROLE_NAMES = {
    "pad": ("[PAD]", "<pad>", "<|pad|>", "<|padding|>", "<|finetune_right_pad_id|>"),
    "bos": ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "<|im_start|>"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>", "<|mdm_mask|>", "<mask_token>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
}


def is_hf(spec: str) -> bool:
  """Whether a `data.tokenizer` value names a Hugging Face tokenizer ("hf:PATH")."""
  return isinstance(spec, str) and spec.startswith(HF_PREFIX)


def _hf_library():
  try:
    import tokenizers
  except ImportError as e:
    raise TokenizerError("data.tokenizer='hf:...' reads Hugging Face tokenizers with the `tokenizers` library, which "
                         "is not installed: pip install tokenizers (or pip install -e '.[hf]').") from e
  return tokenizers


def _token_text(value):
  """A config file's token entry: a string, or {"content": ...} (AddedToken's form)."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def resolve_hf_special_ids(tokenizer, config: dict) -> tuple[special_tokens.SpecialIds, int, dict]:
  """(SpecialIds, vocab_size, added) for a `tokenizers.Tokenizer` and its config files' merged dict (the rules: the
  section above `HF_PREFIX`); `added` maps each role given a new id past the vocabulary to that id."""
  base = tokenizer.get_vocab_size(with_added_tokens=True)
  specials = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}

  def find(role):
    text = _token_text(config.get(f"{role}_token"))
    if text is not None:
      found = tokenizer.token_to_id(text)
      if found is None:
        raise TokenizerError(f"The tokenizer's config names {role}_token={text!r}, which is not in its vocabulary.")
      return found
    for name in HF_ROLE_NAMES[role]:
      if name in specials or (role in ("cls", "sep", "unk") and tokenizer.token_to_id(name) is not None):
        return tokenizer.token_to_id(name)
    return None

  ids = {role: find(role) for role in HF_ROLE_NAMES}
  ids["eos"] = next((ids[r] for r in ("eos", "sep", "bos") if ids[r] is not None), None)
  if ids["eos"] is None:
    raise TokenizerError("This tokenizer has no end-of-text token (eos_token / sep_token in tokenizer_config.json, "
                         f"or one of {HF_ROLE_NAMES['eos'] + HF_ROLE_NAMES['sep']}); documents need a separator. "
                         "Add one to its tokenizer_config.json.")
  ids["bos"] = next(ids[r] for r in ("bos", "cls", "eos") if ids[r] is not None)
  added, next_id = {}, base
  for role in ("pad", "mask"):
    if ids[role] is None:
      ids[role] = added[role] = next_id
      next_id += 1
  special = special_tokens.SpecialIds(pad=ids["pad"], bos=ids["bos"], eos=ids["eos"], mask=ids["mask"],
                                      unk=ids["unk"])
  return special, next_id, added


class HFTokenizer:
  """A Hugging Face `tokenizers.Tokenizer` with its special ids (the section above `HF_PREFIX`). Built by
  `from_path`; serialized whole (its tokenizer.json and config) into every checkpoint by `to_dict`."""
  kind = "hf"

  def __init__(self, tokenizer_json: str, config: dict | None = None, source: str = ""):
    tokenizers = _hf_library()
    self.tokenizer_json, self.config, self.source = tokenizer_json, dict(config or {}), source
    self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    self.tokenizer.no_padding()
    self.tokenizer.no_truncation()
    self.special, self._vocab_size, self.added = resolve_hf_special_ids(self.tokenizer, self.config)
    self.base_vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_path(cls, path: str, flag: str = "data.tokenizer") -> "HFTokenizer":
    """A `tokenizer.json` file, or a folder holding one, as the `transformers` library saves them; the
    tokenizer_config.json / special_tokens_map.json beside it are read when present."""
    p = pathlib.Path(path).expanduser()
    folder, file = (p, p / "tokenizer.json") if p.is_dir() else (p.parent, p)
    if not file.is_file():
      what = (f"the folder {p} has no tokenizer.json" if p.is_dir() else f"{p} does not exist")
      raise TokenizerError(
          f"{flag}=hf:{path}: {what}. Name a tokenizer.json file or a folder holding one (what "
          "`AutoTokenizer.from_pretrained(...).save_pretrained(DIR)` writes for GPT-2, BERT, LLaMA, ...); a folder "
          "with only vocab.json/merges.txt or vocab.txt must be converted to tokenizer.json first.")
    config = {}
    for name in reversed(HF_CONFIG_FILES):  # tokenizer_config.json wins
      extra = folder / name
      if extra.is_file():
        try:
          config.update({k: v for k, v in json.loads(extra.read_text(encoding="utf-8")).items()
                         if k.endswith("_token")})
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise TokenizerError(f"{flag}=hf:{path}: {extra} is not valid JSON ({e}).") from e
    try:
      text = file.read_text(encoding="utf-8")
      return cls(text, config, source=str(path))
    except TokenizerError:
      raise
    except Exception as e:  # the Rust library's parse error
      raise TokenizerError(f"{flag}=hf:{path}: {file} is not a tokenizer the `tokenizers` library reads ({e}).") from e

  @classmethod
  def from_dict(cls, spec: dict) -> "HFTokenizer":
    return cls(spec["tokenizer_json"], spec.get("config"), spec.get("source", ""))

  def to_dict(self) -> dict:
    return {"kind": self.kind, "tokenizer_json": self.tokenizer_json, "config": self.config, "source": self.source}

  @property
  def vocab_size(self) -> int:
    """The tokenizer's vocabulary, its added tokens and the ids added for pad / mask."""
    return self._vocab_size

  def _ids(self, encoding, oov: str) -> np.ndarray:
    ids = np.asarray(encoding.ids, np.int32)
    if oov == "skip" and self.special.unk is not None:
      ids = ids[ids != self.special.unk]
    return ids

  def encode(self, text: str, source: str = "text", oov: str = "error") -> np.ndarray:
    """Ids of `text`, no template tokens added. What the tokenizer cannot spell becomes its own unknown token (as the
    papers' runs score it) under `oov` "error" and "unk"; "skip" drops it."""
    del source
    if oov not in OOV_POLICIES:
      raise TokenizerError(f"Unknown out-of-vocabulary policy {oov!r}; choose one of {OOV_POLICIES}.")
    return self._ids(self.tokenizer.encode(text, add_special_tokens=False), oov)

  def encode_batch(self, texts, oov: str = "error", source: str = "text") -> list:
    """`encode` of each text, in one call of the Rust batch encoder (all cores)."""
    del source
    if oov not in OOV_POLICIES:
      raise TokenizerError(f"Unknown out-of-vocabulary policy {oov!r}; choose one of {OOV_POLICIES}.")
    encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return [self._ids(e, oov) for e in encodings]

  def oov_counts(self, text: str) -> collections.Counter:
    """How often each piece of `text` that became the unknown token occurs."""
    counts = collections.Counter()
    if self.special.unk is None:
      return counts
    encoding = self.tokenizer.encode(text, add_special_tokens=False)
    for i, (start, end) in zip(encoding.ids, encoding.offsets):
      if i == self.special.unk:
        counts[text[start:end]] += 1
    return counts

  def decode(self, ids, mask_glyph: str = MASK_GLYPH) -> str:
    """Runs of ordinary ids decoded by the tokenizer's decoder; the mask id drawn as `mask_glyph`, EOS as a newline,
    pad (and bos, when it is not EOS) dropped, as the other tokenizers decode."""
    special = self.special
    dropped = {special.pad, special.bos} - {special.eos}
    out, run = [], []
    for i in np.asarray(ids).tolist():
      if i in (special.mask, special.eos):
        out.append(self.tokenizer.decode(run, skip_special_tokens=False))
        run = []
        out.append(mask_glyph if i == special.mask else "\n")
      elif i not in dropped and i < self.base_vocab_size:
        run.append(i)
    out.append(self.tokenizer.decode(run, skip_special_tokens=False))
    return "".join(out)

  def decode_exact(self, ids) -> str:
    """The tokenizer's own decoding of `ids` (special tokens written out), for round-trip checks."""
    return self.tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

  def pieces(self) -> list:
    """Each id's text, as segmentation.TokenClasses.from_pieces reads it: None for special and added ids; a WordPiece
    continuation "##x" as "x" and a word-initial piece with the space the decoder puts before it; otherwise the
    decoder's text of the id alone, b"" when that is part of a multi-byte character (U+FFFD)."""
    added = {i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}
    model = self.tokenizer.model
    prefix = getattr(model, "continuing_subword_prefix", None) if type(model).__name__ == "WordPiece" else None
    pieces = []
    for i in range(self.vocab_size):
      if i >= self.base_vocab_size or i in added:
        pieces.append(None)
        continue
      if prefix is not None:
        token = self.tokenizer.id_to_token(i)
        pieces.append(token[len(prefix):] if token.startswith(prefix) else " " + token)
        continue
      text = self.tokenizer.decode([i], skip_special_tokens=False)
      pieces.append(b"" if "\ufffd" in text and self.tokenizer.id_to_token(i) != "\ufffd" else text)
    return pieces

  @functools.cache
  def token_classes(self):
    """The grapheme-boundary and script tables of every id (data/segmentation.py), built once."""
    return segmentation.TokenClasses.from_pieces(self.pieces())


def train_byte_level_bpe(texts, output, vocab_size: int, end_of_text: str = "<|endoftext|>") -> HFTokenizer:
  """Trains a byte-level BPE with GPT-2's layout (byte alphabet, no prefix space, `end_of_text` its only special token)
  on the strings `texts` and writes it as a tokenizer folder (tokenizer.json, and GPT-2's tokenizer_config.json naming
  `end_of_text` bos, eos and unk) to `output`, atomically per file. Returns it as an HFTokenizer (pad and mask then
  take the two ids past the vocabulary)."""
  tokenizers_lib = _hf_library()
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers_lib.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[end_of_text],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                     show_progress=False))
  out = pathlib.Path(output)
  out.mkdir(parents=True, exist_ok=True)
  config = json.dumps({"bos_token": end_of_text, "eos_token": end_of_text, "unk_token": end_of_text})
  for name, text in (("tokenizer.json", tok.to_str()), ("tokenizer_config.json", config)):
    corpus.write_atomic(out / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))
  return HFTokenizer.from_path(str(out))


def train_wordpiece(texts, output, vocab_size: int) -> HFTokenizer:
  """Trains a WordPiece with bert-base-uncased's layout (lowercasing BERT normalizer and pre-tokenizer, "##"
  continuations, [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, the [CLS] $A [SEP] template) on the strings `texts` and
  writes it as a tokenizer folder (tokenizer.json and BERT's tokenizer_config.json) to `output`, atomically per file."""
  tokenizers_lib = _hf_library()
  from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
  tok = tokenizers_lib.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  tok.train_from_iterator(texts, trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
  tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                     special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  config = json.dumps({"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "mask_token": "[MASK]",
                       "unk_token": "[UNK]", "do_lower_case": True})
  out = pathlib.Path(output)
  out.mkdir(parents=True, exist_ok=True)
  for name, text in (("tokenizer.json", tok.to_str()), ("tokenizer_config.json", config)):
    corpus.write_atomic(out / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))
  return HFTokenizer.from_path(str(out))


def from_dict(spec: dict):
  """The tokenizer a checkpoint's `to_dict` describes."""
  if spec["kind"] == CharTokenizer.kind:
    return CharTokenizer(spec["alphabet"])
  if spec["kind"] == SentencePieceTokenizer.kind:
    return SentencePieceTokenizer(base64.b64decode(spec["model_proto_b64"]))
  if spec["kind"] == HFTokenizer.kind:
    return HFTokenizer.from_dict(spec)
  raise TokenizerError(f"Unknown tokenizer kind {spec['kind']!r} in checkpoint.")


def fingerprint(tokenizer) -> str:
  """A hash of what the tokenizer maps (not of where it was read from: an HF tokenizer's `source`)."""
  spec = {k: v for k, v in tokenizer.to_dict().items() if k != "source"}
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


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
  corpus.write_atomic(out, lambda tmp: tmp.write_bytes(proto))
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
