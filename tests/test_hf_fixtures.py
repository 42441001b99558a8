"""The committed Hugging Face fixtures (tests/fixtures/make_hf_fixtures.py, issue #28) are whole and readable without
torch: each family's tokenizer loads with the special ids of its layout, its safetensors weights load with numpy and
hold the parameters its config implies, and its reference outputs have the shapes the importer tests compare."""
import json
import pathlib

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="the `tokenizers` library is not installed (pip install tokenizers)")
safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed (pip install "
                                        "safetensors)")

from dlm_jax.data import tokenizers  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "hf"
FAMILIES = {"bert": False, "modernbert": False, "llama": True, "qwen2": True, "gpt2": False}  # name: decoder


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fixture_is_whole(family):
  folder = FIXTURES / family
  config = json.loads((folder / "config.json").read_text())
  tok = tokenizers.HFTokenizer.from_path(str(folder))
  if family in ("bert", "modernbert"):  # BERT's layout: its own [PAD] 0, [CLS] 2, [SEP] 3, [MASK] 4, [UNK] 1
    assert (tok.special.pad, tok.special.bos, tok.special.eos, tok.special.mask, tok.special.unk) == (0, 2, 3, 4, 1)
  else:  # GPT-2's: <|endoftext|> 0 is bos and eos; pad and mask past the vocabulary
    assert (tok.special.bos, tok.special.eos, tok.special.mask) == (0, 0, tok.base_vocab_size + 1)
  assert config["vocab_size"] == tok.base_vocab_size
  weights = safetensors_numpy.load_file(str(folder / "model.safetensors"))
  width = config.get("hidden_size", config.get("n_embd"))
  embedding = next(v for k, v in weights.items() if k.endswith(("word_embeddings.weight", "embed_tokens.weight",
                                                                "tok_embeddings.weight", "wte.weight")))
  assert embedding.shape == (config["vocab_size"], width) and embedding.dtype == np.float32
  reference = np.load(folder / "reference.npz")
  assert reference["input_ids"].shape == (2, 12) and reference["input_ids"].max() < config["vocab_size"]
  assert reference["logits"].shape == (2, 12, config["vocab_size"]) and np.isfinite(reference["logits"]).all()
  assert ("logits_bidirectional" in reference) == FAMILIES[family]
  assert ("loss" in reference) == (family == "gpt2")
