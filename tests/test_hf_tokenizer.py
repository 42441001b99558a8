"""Hugging Face tokenizers (data.tokenizer="hf:PATH"): special ids as the tokenizer's property, exact round trips on
the held-in corpora with a byte-level BPE (GPT-2's layout) and a WordPiece (bert-base-uncased's layout) trained here,
and a run that trains, checkpoints and samples with ids that are not our 0..4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tokenizers_lib = pytest.importorskip("tokenizers", reason="the `tokenizers` library is not installed (pip install "
                                     "tokenizers; the GPU machine's wheels lack it)")

from conftest import tiny_config  # noqa: E402
from dlm_jax import special_tokens  # noqa: E402
from dlm_jax.data import corpus, pipeline, tokenizers  # noqa: E402
from dlm_jax.sampling import SamplerConfig, sample, stateless  # noqa: E402

SHARED = corpus.data_dir()
HELD_IN = ("en/tinyshakespeare.txt", "hi/tico19_test.txt", "hinglish/phinc.txt")
EMBEDDED = "embedded:pydoc_topics"


def embedded_docs():
  return corpus.load_documents(EMBEDDED, "data.path").docs


def train_byte_level_bpe(texts, folder, vocab_size=600):
  """GPT-2's layout (tokenizers.train_byte_level_bpe: launch.tokenizer --model_type=byte_bpe): the tokenizer folder."""
  tokenizers.train_byte_level_bpe(texts, folder, vocab_size)
  return folder


def train_wordpiece(texts, folder, vocab_size=600):
  """bert-base-uncased's layout (tokenizers.train_wordpiece): the tokenizer folder."""
  tokenizers.train_wordpiece(texts, folder, vocab_size)
  return folder


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  return train_byte_level_bpe(embedded_docs(), tmp_path_factory.mktemp("bpe"))


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory):
  return train_wordpiece(embedded_docs(), tmp_path_factory.mktemp("wordpiece"))


def test_gpt2_layout_special_ids_follow_mdlm(bpe_dir, tmp_path):
  tok = tokenizers.HFTokenizer.from_path(str(bpe_dir))
  eot = tok.tokenizer.token_to_id("<|endoftext|>")
  base = tok.tokenizer.get_vocab_size(with_added_tokens=True)
  # <|endoftext|> is bos, eos and unk; pad and mask are new ids past the vocabulary, pad first (MDLM's GPT-2 setting).
  assert tok.special == special_tokens.SpecialIds(pad=base, bos=eot, eos=eot, mask=base + 1, unk=eot)
  assert tok.vocab_size == base + 2 and tok.added == {"pad": base, "mask": base + 1}
  assert tok.special.never_sampled == (base, base + 1)  # EOS stays drawable although it is also bos and unk
  # Without the config file the same ids come from the token's conventional name (unk then absent).
  (tmp_path / "tokenizer.json").write_bytes((bpe_dir / "tokenizer.json").read_bytes())
  bare = tokenizers.HFTokenizer.from_path(str(tmp_path / "tokenizer.json"))
  assert (bare.special.bos, bare.special.eos, bare.special.unk, bare.special.mask) == (eot, eot, None, base + 1)


def test_bert_layout_keeps_its_own_special_ids(wordpiece_dir):
  tok = tokenizers.HFTokenizer.from_path(str(wordpiece_dir))
  # [CLS] starts and [SEP] ends a document; [PAD] and [MASK] are the tokenizer's own, so nothing is added.
  assert tok.special == special_tokens.SpecialIds(pad=0, bos=2, eos=3, mask=4, unk=1)
  assert tok.vocab_size == tok.tokenizer.get_vocab_size(with_added_tokens=True) and tok.added == {}


def test_decode_draws_mask_and_eos_and_drops_pad(bpe_dir):
  tok = tokenizers.HFTokenizer.from_path(str(bpe_dir))
  s = tok.special
  a, b = tok.encode("ab cd"), tok.encode("xy")
  ids = np.concatenate([a, [s.mask, s.mask], b, [s.eos], a, [s.pad, s.pad]])
  assert tok.decode(ids) == "ab cd" + tokenizers.MASK_GLYPH * 2 + "xy\nab cd"
  # The checkpoint's copy is the same tokenizer (ids, special ids, fingerprint), wherever it was read from.
  again = tokenizers.from_dict(tok.to_dict())
  assert again.special == tok.special and tokenizers.fingerprint(again) == tokenizers.fingerprint(tok)
  np.testing.assert_array_equal(again.encode("ab cd\nxy"), tok.encode("ab cd\nxy"))


@pytest.mark.parametrize("name", HELD_IN)
def test_exact_round_trips_on_the_held_in_corpora(name, tmp_path):
  if SHARED is None or not (SHARED / name).is_file():
    pytest.skip(f"../shared/data/{name} is absent (set DLM_DATA_DIR to the shared corpora)")
  text = corpus.read_utf8(SHARED / name)
  lines = text.splitlines(keepends=True)
  bpe = tokenizers.HFTokenizer.from_path(str(train_byte_level_bpe(lines[:2000], tmp_path / "bpe", 2000)))
  # Byte-level BPE: every text comes back exactly, in one piece and batched by lines.
  assert bpe.decode(bpe.encode(text)) == text
  batch = bpe.encode_batch(lines)
  assert "".join(bpe.decode(ids) for ids in batch) == text
  np.testing.assert_array_equal(np.concatenate(batch[:50]), bpe.encode("".join(lines[:50])))
  # WordPiece lowercases, strips accents and re-spaces punctuation, so its text does not come back: its ids do.
  wordpiece = tokenizers.HFTokenizer.from_path(str(train_wordpiece(lines[:2000], tmp_path / "wp", 2000)))
  for ids in wordpiece.encode_batch(lines[:3000]):
    np.testing.assert_array_equal(wordpiece.encode(wordpiece.decode_exact(ids)), ids)


def test_pieces_give_wordpiece_spacing_and_partial_bytes(bpe_dir, wordpiece_dir):
  wordpiece = tokenizers.HFTokenizer.from_path(str(wordpiece_dir))
  pieces = wordpiece.pieces()
  for i in range(5, len(pieces)):
    token = wordpiece.tokenizer.id_to_token(i)
    assert pieces[i] == (token[2:] if token.startswith("##") else " " + token)
  assert pieces[:5] == [None] * 5
  bpe = tokenizers.HFTokenizer.from_path(str(bpe_dir))
  pieces = bpe.pieces()
  assert pieces[bpe.special.eos] is None and pieces[bpe.special.pad] is None and pieces[bpe.special.mask] is None
  # Byte-level single bytes >= 0x80 are parts of a character; ASCII bytes are themselves.
  high = bpe.tokenizer.token_to_id("\u00e0")  # the byte 0xE0 in GPT-2's byte alphabet
  assert pieces[high] == b"" and pieces[bpe.tokenizer.token_to_id("a")] == "a"
  assert pieces[bpe.tokenizer.token_to_id("\u0120")] == " "  # Ġ: the space byte


def test_bad_paths_get_one_clear_error(tmp_path):
  with pytest.raises(tokenizers.TokenizerError, match=r"data.tokenizer=hf:.*nope does not exist.*tokenizer.json"):
    tokenizers.HFTokenizer.from_path(str(tmp_path / "nope"))
  with pytest.raises(tokenizers.TokenizerError, match="has no tokenizer.json"):
    tokenizers.HFTokenizer.from_path(str(tmp_path))
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(tokenizers.TokenizerError, match="is not a tokenizer the `tokenizers` library reads"):
    tokenizers.HFTokenizer.from_path(str(tmp_path))


def test_pipeline_joins_documents_with_the_tokenizers_eos(bpe_dir, tmp_path):
  import ml_collections
  docs_dir = tmp_path / "docs"
  docs_dir.mkdir()
  docs = ["First document, with some words.\n" * 8, "Second one: नमस्ते.\n" * 8]
  for i, doc in enumerate(docs):
    (docs_dir / f"{i}.txt").write_text(doc, encoding="utf-8")
  config = ml_collections.ConfigDict(dict(path=str(docs_dir), valid_path=str(docs_dir), valid_fraction=0.1,
                                          seq_len=8, tokenizer=f"hf:{bpe_dir}", tokenizer_path="", seed=0))
  streams = pipeline.load_token_streams(config, tmp_path / "cache")
  tok = streams.tokenizer
  expected = np.concatenate([tok.encode(docs[0]), [tok.special.eos], tok.encode(docs[1])])
  np.testing.assert_array_equal(streams.train, expected)


def test_masked_sampler_uses_the_tokenizers_ids_not_ours():
  """A toy denoiser that puts the most mass on id 3 (our MASK, here an ordinary token) and on the tokenizer's own pad,
  bos and mask ids: the sampler must reveal every position, draw id 3, and never draw pad, bos or mask."""
  V = 12
  special = special_tokens.SpecialIds(pad=8, bos=9, eos=10, mask=11, unk=None)
  logits_V = jnp.zeros((V,)).at[jnp.asarray([3, 8, 9, 11])].set(5.0)
  denoise = stateless(lambda x, t: jnp.broadcast_to(logits_V, x.shape + (V,)))
  tokens = jnp.full((4, 16), special.mask, jnp.int32).at[:, 0].set(5)
  fixed = jnp.zeros((4, 16), bool).at[:, 0].set(True)
  for overrides in ({}, {"method": "ancestral"}, {"block_length": 4}, {"eos_stop": True}):
    cfg = SamplerConfig(steps=8, special=special, **overrides)
    out = np.asarray(jax.jit(lambda r: sample(denoise, r, tokens, fixed, cfg).tokens_BxL)(jax.random.key(0)))
    assert not np.isin(out, [8, 9, 11]).any(), overrides
    assert (out[:, 1:] == 3).mean() > 0.5, overrides


def test_a_run_trains_checkpoints_and_samples_with_hf_ids(bpe_dir, tmp_path):
  """The whole path with ids that are not our 0..4: the objective masks with the tokenizer's mask id, the model and
  sampler read it from the checkpoint's tokenizer, and a resumed run keeps it."""
  from dlm_jax.sampling import text as text_lib
  from dlm_jax.training import checkpoint, loop
  import shutil
  shutil.copytree(bpe_dir, tmp_path / "tok")
  config = tiny_config(**{"data.tokenizer": f"hf:{tmp_path / 'tok'}", "train.num_steps": 4, "train.checkpoint_every": 4,
                          "eval.every": 4, "eval.num_windows": 4, "model.self_conditioning": True})
  summary = loop.train(config, str(tmp_path / "run"))
  assert summary["vocab_size"] == tokenizers.HFTokenizer.from_path(str(bpe_dir)).vocab_size
  run = checkpoint.load_for_inference(str(tmp_path / "run"))
  special = run.tokenizer.special
  assert run.tokenizer.kind == "hf" and special.mask == run.tokenizer.vocab_size - 1
  assert run.objective.mask_id == special.mask and run.model_config.mask_id == special.mask
  assert run.sampler_config().special == special
  # The model's self-conditioning estimate removes the tokenizer's mask id (SUBS), and only it.
  x = jnp.full((1, 32), special.mask, jnp.int32)
  model = run.model()
  estimate = np.asarray(model.sample_step(x, jnp.ones((1,)), model.init_sample_carry(1, 32))[2])
  assert np.all(estimate[..., special.mask] == 0) and np.all(estimate[..., special_tokens.MASK] > 0)
  generation = text_lib.generate(run, num_samples=2, prompt="The", length=12, overrides={"steps": 6})
  tokens = np.asarray(generation.output.tokens_BxL)
  assert not np.isin(tokens, special.never_sampled).any()
  assert all(t.startswith("The") for t in generation.texts)
  # A resumed run keeps the checkpoint's tokenizer (data.tokenizer names the same one: fingerprints compared).
  config.train.num_steps = 6
  resumed = loop.train(config, str(tmp_path / "run"))
  assert resumed["step"] == 6 and resumed["tokenizer"].special == special
  train_byte_level_bpe(embedded_docs()[:10], tmp_path / "tok", 300)  # another tokenizer at the same path
  config.train.num_steps = 8
  with pytest.raises(checkpoint.CheckpointError, match="is not the tokenizer the checkpoint"):
    loop.train(config, str(tmp_path / "run"))


def test_tokenizer_cli_trains_a_byte_level_bpe_folder(tmp_path):
  import subprocess
  import sys
  from conftest import REPO
  (tmp_path / "text.txt").write_text("\n".join(embedded_docs()[:20]), encoding="utf-8")
  out = subprocess.run([sys.executable, "-m", "launch.tokenizer", f"--input={tmp_path / 'text.txt'}",
                        "--model_type=byte_bpe", "--vocab_size=400", f"--output={tmp_path / 'bpe'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  tok = tokenizers.HFTokenizer.from_path(str(tmp_path / "bpe"))
  assert tok.base_vocab_size == 400 and tok.vocab_size == 402 and f"hf:{tmp_path / 'bpe'}" in out.stdout
  assert tok.decode(tok.encode("def f(x):\n  return x")) == "def f(x):\n  return x"
