"""Hugging Face checkpoints in and out (models/hf.py, models/pretrained.py, training/hf_checkpoints.py), on the tiny
checkpoints of tests/fixtures/hf with transformers' reference outputs (tests/fixtures/make_hf_fixtures.py; no torch
here): logits, the judge's NLL, export and re-import, KV caches, FSDP placement, the BERT fine-tune, LoRA, chat SFT."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, tiny_config

pytest.importorskip("tokenizers", reason="the `tokenizers` library is not installed (pip install -e '.[hf]')")
pytest.importorskip("safetensors", reason="safetensors is not installed (pip install -e '.[hf]')")
from dlm_jax import special_tokens
from dlm_jax.data import chat, pipeline, tokenizers
from dlm_jax.errors import ConfigError
from dlm_jax.evaluation import generation
from dlm_jax.models import hf
from dlm_jax.training import checkpoint, hf_checkpoints, loop

FIXTURES = REPO / "tests" / "fixtures" / "hf"
# (fixture, objective it is loaded for, reference key): decoders are compared causal (as trained) and bidirectional
# (as LLaDA and Dream run the LLaMA/Qwen2 layouts: transformers with a full 4D attention mask).
CASES = [("bert", "elbo", "logits"), ("modernbert", "elbo", "logits"), ("modernbert_local", "elbo", "logits"),
         ("gpt2", "autoregressive", "logits"), ("llama", "autoregressive", "logits"),
         ("llama", "elbo", "logits_bidirectional"), ("qwen2", "autoregressive", "logits"),
         ("qwen2", "elbo", "logits_bidirectional"), ("llada", "elbo", "logits")]


def load(name, objective="elbo", **overrides):
  return hf_checkpoints.load_run(str(FIXTURES / name), tiny_config(), objective, seq_len=64, dtype="float32",
                                 **overrides)


def logits_of(run, ids, vocab):
  return np.asarray(run.model()(jnp.asarray(ids)).logits_BxLxV)[..., :vocab]


@pytest.mark.parametrize("name,objective,key", CASES)
def test_logits_equal_transformers(name, objective, key):
  reference = np.load(FIXTURES / name / "reference.npz")
  run = load(name, objective)
  assert run.model_config.causal == (objective == "autoregressive")
  np.testing.assert_allclose(logits_of(run, reference["input_ids"], reference[key].shape[-1]), reference[key],
                             rtol=1e-4, atol=1e-4)


def test_each_modernbert_switch_moves_the_logits_past_the_tolerance():
  """The local fixture (std-0.5 weights) tells the window, both RoPE bases and layer 0's missing norm apart: the
  logits test above fails when any of them is wrong."""
  reference = np.load(FIXTURES / "modernbert_local" / "reference.npz")
  for wrong in ({"sliding_window": 0}, {"local_rope_base": 160000.0}, {"rope_base": 10000.0},
                {"first_attention_norm": True}):
    run = load("modernbert_local")
    cfg = run.config.model
    for field, value in wrong.items():
      cfg[field] = value
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: hf_checkpoints.models.get_model(
        run.config, run.tokenizer.vocab_size, nnx.Rngs(0), run.tokenizer.special)))
    out = np.asarray(nnx.merge(graphdef, run.params, run.other)(jnp.asarray(reference["input_ids"])).logits_BxLxV)
    assert np.abs(out - reference["logits"]).max() > 1e-3, wrong


def test_the_judges_nll_equals_transformers_loss():
  reference = np.load(FIXTURES / "gpt2" / "reference.npz")
  judge = load("gpt2", "autoregressive")
  ids = jnp.asarray(reference["input_ids"])
  nll_sum, count = generation.judge_for(judge, judge)(ids, jnp.ones(ids.shape, bool))
  assert abs(float(nll_sum.sum() / count.sum()) - float(reference["loss"])) < 1e-5
  # Without excluding the pad and mask rows our tokenizer added, the softmax leaks to them: another number.
  plain = generation.judge_nll_fn(lambda x, t: judge.model()(x, t).logits_BxLxV)(ids, jnp.ones(ids.shape, bool))
  assert abs(float(plain[0].sum() / plain[1].sum()) - float(reference["loss"])) > 1e-3


def test_a_retokenizing_judge_scores_the_text_past_the_prompt(tmp_path):
  """A run with its own (character) tokenizer is judged on its decoded text, retokenized: the same NLL as the judge
  on its own ids of that text, scored past the prompt's judge tokens."""
  judge = load("gpt2", "autoregressive")
  text_prompt, text_rest = "The quick brown fox", " jumps over the lazy dog."
  char = tokenizers.CharTokenizer.from_texts([text_prompt + text_rest])
  run = type("Run", (), {"tokenizer": char})()
  ids = char.encode(text_prompt + text_rest)[None]
  scored = np.zeros(ids.shape, bool)
  scored[:, len(text_prompt):] = True
  nll_sum, count = generation.judge_for(run, judge)(ids, scored)
  judge_ids = judge.tokenizer.encode(text_prompt + text_rest)
  start = len(judge.tokenizer.encode(text_prompt))
  direct_scored = np.zeros((1, len(judge_ids)), bool)
  direct_scored[:, start:] = True
  direct = generation.judge_for(judge, judge)(jnp.asarray(judge_ids[None]), jnp.asarray(direct_scored))
  assert int(count[0]) == int(direct[1][0]) == len(judge_ids) - start
  np.testing.assert_allclose(float(nll_sum[0]), float(direct[0][0]), rtol=1e-5)


@pytest.mark.parametrize("name", ["bert", "modernbert_local", "gpt2", "llama", "qwen2", "llada"])
def test_export_then_import_is_bit_identical(name, tmp_path):
  objective = "autoregressive" if name == "gpt2" else "elbo"
  run = load(name, objective)
  info = hf_checkpoints.export_run(run, tmp_path / "out")
  again = hf_checkpoints.load_run(str(tmp_path / "out"), tiny_config(), objective, seq_len=64, dtype="float32")
  assert jax.tree.structure(again.params) == jax.tree.structure(run.params)
  assert all(np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(again.params)))
  assert again.config.model.to_dict() == run.config.model.to_dict()
  assert again.tokenizer.special == run.tokenizer.special and again.tokenizer.vocab_size == run.tokenizer.vocab_size
  config = json.loads((tmp_path / "out" / "config.json").read_text())
  assert config["architectures"] == [hf.ARCHITECTURES[run.config.model.family]]
  assert config["vocab_size"] == run.tokenizer.vocab_size and info["parameters"] == sum(
      x.size for path, x in nnx.to_flat_state(run.params) if not (name == "modernbert_local" and path[:3] == (
          "blocks", 0, "attn_norm")))


@pytest.mark.parametrize("name", ["llama", "qwen2", "modernbert_local", "bert"])
def test_kv_caches_of_an_imported_model_reproduce_its_forward_pass(name):
  """Fast-dLLM's caches (grouped-query heads, biases, ModernBERT's per-layer windows, post-norm BERT): a prefill's
  logits, and a cached step over unchanged tokens, equal the full forward pass (to float32 rounding: 2e-5 absolute
  plus 1e-5 relative; one of 3,200 ModernBERT logits of size 2 differed by 2.03e-5 on a 2026-12-07 CPU, a wrong cache
  by 1e-1 and more)."""
  run = load(name)
  model = run.model()
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 150, (2, 24)), jnp.int32)
  full = np.asarray(model(ids).logits_BxLxV)
  everywhere = jnp.broadcast_to(jnp.arange(24), (2, 24))
  prefill, cache = model.kv_prefill(ids, None, everywhere)
  np.testing.assert_allclose(np.asarray(prefill), full, atol=2e-5, rtol=1e-5)
  block = jnp.broadcast_to(jnp.arange(8, 16), (2, 8))
  step, _ = model.kv_step(ids, None, block, cache)
  np.testing.assert_allclose(np.asarray(step), full[:, 8:16], atol=2e-5, rtol=1e-5)


def test_an_imported_decoder_samples_with_blocks_dual_cache_and_threshold():
  from dlm_jax.sampling import text as text_lib
  run = load("llama")
  result = text_lib.generate(run, num_samples=2, prompt="The", length=16, overrides={
      "steps": 8, "block_length": 8, "cache": "dual", "threshold": 0.5, "eos_stop": True})
  tokens = np.asarray(result.output.tokens_BxL)
  prompt_len = len(run.tokenizer.encode("The"))
  assert not np.isin(tokens[:, prompt_len:], [run.tokenizer.special.mask]).any()
  assert all(text.startswith("The") for text in result.texts)


def test_launch_sample_decodes_a_checkpoint_folder_as_it_is():
  out = subprocess.run([sys.executable, "-m", "launch.sample", f"--hf={FIXTURES / 'qwen2'}", "--prompt=The",
                        "--length=8", "--steps=4", "--num_samples=1", "--block_length=4", "--cache=dual"],
                       capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert "a Hugging Face checkpoint as imported (qwen2 layout)" in out.stdout
  assert "--- sample 0 ---\nThe" in out.stdout


FSDP_SCRIPT = """
import json, sys, numpy as np, jax
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from dlm_jax.training import hf_checkpoints, sharding
mesh = sharding.MeshContext(sharding.make_mesh(1, -1, 1))
single = hf_checkpoints.load_run({path!r}, tiny_config(), seq_len=64, dtype="float32")
split = hf_checkpoints.load_run({path!r}, tiny_config(), seq_len=64, dtype="float32", mesh=mesh)
ids = np.random.default_rng(0).integers(5, 300, (2, 16))
kernel = split.params["blocks"][0]["mlp"]["gate_up"]["kernel"][...]
print(json.dumps({{"devices": jax.device_count(),
                   "kernel_shards": [list(s.data.shape) for s in kernel.addressable_shards],
                   "max_diff": float(np.abs(np.asarray(single.model()(ids).logits_BxLxV)
                                            - np.asarray(mesh.bind(lambda: split.model()(ids).logits_BxLxV)())).max())}}))
"""


def test_a_checkpoint_loads_split_over_an_fsdp_mesh(tmp_path):
  """Each tensor is placed by its logical axes as it is read: on 4 CPU devices the MLP kernel [32, 128] is held as
  four [8, 128] shards, and the model computes the single-device logits."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  script = FSDP_SCRIPT.format(tests=str(REPO / "tests"), path=str(FIXTURES / "llama"))
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == 4 and result["kernel_shards"] == [[8, 128]] * 4
  assert result["max_diff"] < 1e-5


def test_bad_checkpoints_get_one_clear_error(tmp_path):
  with pytest.raises(hf.CheckpointFormatError, match="has no config.json"):
    hf.read_config(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
  with pytest.raises(hf.CheckpointFormatError, match="model_type 't5' is not one this importer reads"):
    hf.read_config(tmp_path)
  broken = tmp_path / "broken"
  shutil.copytree(FIXTURES / "llama", broken)
  config = json.loads((broken / "config.json").read_text())
  (broken / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
  with pytest.raises(hf.CheckpointFormatError, match=r"mlp/gate_up/kernel.*\(32, 96\)"):
    hf_checkpoints.load_run(str(broken), tiny_config(), seq_len=64)
  (broken / "model.safetensors").unlink()
  with pytest.raises(hf.CheckpointFormatError, match="no model.safetensors"):
    hf_checkpoints.load_run(str(broken), tiny_config(), seq_len=64)
  with pytest.raises(ConfigError, match="model.time_conditioning=True adds parameters"):
    hf_checkpoints.configure(tiny_config(**{"train.init_from": f"hf:{FIXTURES / 'bert'}",
                                            "model.time_conditioning": True}))
  with pytest.raises(ConfigError, match="data.seq_len=128 exceeds the checkpoint's 64 learned positions"):
    loop.train(tiny_config(**{"train.init_from": f"hf:{FIXTURES / 'bert'}", "data.seq_len": 128}),
               str(tmp_path / "run"))


def test_fine_tuning_the_tiny_bert_lowers_its_masked_nelbo(tmp_path):
  """Seed 002's recipe at fixture size: BERT's encoder and MLM head as the denoiser, the masked NELBO on the embedded
  corpus (which its WordPiece was trained on). Step 1 at learning rate 0 evaluates the imported weights."""
  results = {}
  for name, steps, lr in (("before", 1, 0.0), ("after", 40, 1e-3)):
    config = tiny_config(**{"train.init_from": f"hf:{FIXTURES / 'bert'}", "train.num_steps": steps,
                            "eval.every": steps, "eval.num_windows": 32, "optimizer.learning_rate": lr})
    results[name] = loop.train(config, str(tmp_path / name))["eval_nll_per_token"]
  run = checkpoint.load_for_inference(str(tmp_path / "after"))
  assert run.config.model.family == "bert" and run.tokenizer.special.mask == 4  # BERT's own [MASK]
  assert results["after"] < results["before"] - 0.1, results


def test_lora_trains_only_adapters_and_its_merged_model_equals_the_adapted_one(tmp_path):
  config = tiny_config(**{"train.init_from": f"hf:{FIXTURES / 'llama'}", "train.num_steps": 6, "eval.every": 0,
                          "optimizer.learning_rate": 1e-2, "model.dtype": "float32"})
  config.train.lora_rank, config.train.lora_targets = 4, "qkv,out,mlp"
  loop.train(config, str(tmp_path / "run"))
  run = checkpoint.load_for_inference(str(tmp_path / "run"))
  base = dict(nnx.to_flat_state(load("llama").params))
  tuned = dict(nnx.to_flat_state(run.params))
  adapters = sorted(set(tuned) - set(base))
  assert len(adapters) == 2 * 2 * 4 and all(p[-2] == "lora" for p in adapters)  # 2 layers x 4 sites x (A, B)
  assert all(np.array_equal(np.asarray(tuned[p][...]), np.asarray(base[p][...])) for p in base)  # base frozen
  assert all(np.abs(np.asarray(tuned[p][...])).max() > 0 for p in adapters if p[-1] == "lora_b")  # B moved off 0
  # The optimizer state holds moments of the adapters only.
  mngr = checkpoint.manager(tmp_path / "run", create=False)
  state = mngr.restore(mngr.latest_step(), args=checkpoint.ocp.args.Composite(
      state=checkpoint.ocp.args.StandardRestore()))["state"]
  moment_sizes = sum(np.size(x) for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) > 0)
  assert moment_sizes == 2 * sum(tuned[p][...].size for p in adapters)
  # Merged into the kernels (W + A B), the model without adapters computes the adapted model's logits.
  merged = hf_checkpoints.merge_lora(run.params)
  plain_config = run.config.copy_and_resolve_references()
  plain_config.model.lora_rank = 0
  graphdef, _, other = nnx.split(nnx.eval_shape(lambda: hf_checkpoints.models.get_model(
      plain_config, run.tokenizer.vocab_size, nnx.Rngs(0), run.tokenizer.special)), nnx.Param, ...)
  ids = jnp.asarray(np.random.default_rng(1).integers(5, 300, (2, 32)))
  np.testing.assert_allclose(np.asarray(nnx.merge(graphdef, merged, other)(ids).logits_BxLxV),
                             np.asarray(run.model()(ids).logits_BxLxV), atol=1e-5)
  info = hf_checkpoints.export_run(run, tmp_path / "out")
  assert info["parameters"] == sum(x[...].size for x in base.values())


def write_chat(path: pathlib.Path, count: int = 40):
  rng = np.random.default_rng(0)
  lines = []
  for _ in range(count):
    a, b = (int(x) for x in rng.integers(0, 50, 2))
    lines.append(json.dumps({"messages": [{"role": "user", "content": f"{a} plus {b}?"},
                                          {"role": "assistant", "content": f"{a + b}."}]}))
  lines.append(json.dumps({"prompt": "Say hi.", "response": "hi"}))
  path.write_text("\n".join(lines) + "\n")
  return path


def test_chat_windows_mark_the_prompt_and_fill_with_eos_or_pad(tmp_path):
  char = tokenizers.CharTokenizer.from_texts(["User: Assistant: 0123456789.? plus hiSay\n"])
  pairs = [chat.render(m, "plain", char) for m in chat.read_conversations(str(write_chat(tmp_path / "c.jsonl")))]
  assert pairs[-1] == ("User: Say hi.\nAssistant: ", "hi")
  special = char.special
  for fill, filler in (("eos", special.eos), ("pad", special.pad)):
    window = chat.encode(pairs, char, "plain", fill).window(0, 48, special)
    ids, given = special_tokens.split_fixed(window)
    prompt = np.concatenate([[special.bos], char.encode(pairs[0][0])])
    answer = char.encode(pairs[0][1])
    np.testing.assert_array_equal(ids[:len(prompt)], prompt)
    assert given[:len(prompt)].all() and not given[len(prompt):].any()
    np.testing.assert_array_equal(ids[len(prompt):len(prompt) + len(answer)], answer)
    assert ids[len(prompt) + len(answer)] == special.eos and (ids[len(prompt) + len(answer) + 1:] == filler).all()
  with pytest.raises(Exception, match="end with the assistant's"):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    chat.read_conversations(str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize("objective", ["elbo", "autoregressive"])
def test_the_prompt_is_never_masked_nor_scored(objective):
  """A lookup-table denoiser records its inputs: the prompt reaches it as it is (never masked, the flag cleared), and
  the logits that would score a prompt token do not move the loss (exactly). The AR arm's loss is the exact mean
  over the answer's tokens, the padding after it left out."""
  from dlm_jax import objectives
  from dlm_jax.models.base import DenoiserOutput
  config = tiny_config(**{"data.layout": "chat", "diffusion.objective": objective})
  config.model.causal = objective == "autoregressive"
  objective_ = objectives.from_config(config, 20)
  special = objective_.special
  ids = np.random.default_rng(0).integers(5, 20, (4, 16)).astype(np.int32)
  given = np.zeros((4, 16), bool)
  given[:, :6] = True
  ids[:, 12:] = special.pad
  x0 = jnp.asarray(special_tokens.mark_fixed(ids, given))
  scores_prompt = given.copy()  # the positions whose logits would score a prompt token
  if objective == "autoregressive":
    scores_prompt = np.zeros_like(given)
    scores_prompt[:, :-1] = given[:, 1:]
  base_logits = jnp.broadcast_to(jnp.arange(20.0) / 10, (4, 16, 20))
  seen, losses = [], []
  for prompt_value in (0.0, 7.0):
    def fn(x, t, *_, value=prompt_value):
      seen.append(np.asarray(x))
      return DenoiserOutput(jnp.where(jnp.asarray(scores_prompt)[..., None], value, base_logits))
    losses.append(float(objective_(fn, x0, jax.random.key(3), with_aux=False)[0]))
    np.testing.assert_array_equal(seen[-1][:, :6], ids[:, :6])
  assert losses[0] == losses[1]
  if objective == "autoregressive":
    log_p = np.arange(20.0) / 10 - np.log(np.sum(np.exp(np.delete(np.arange(20.0) / 10, special.mask))))
    targets = (~given[:, 1:]) & (ids[:, 1:] != special.pad)
    np.testing.assert_allclose(losses[0], -np.mean(log_p[ids[:, 1:][targets]]), rtol=1e-6)


def test_a_chat_run_trains_and_answers_in_the_terminal(tmp_path):
  config = tiny_config(**{"data.path": str(write_chat(tmp_path / "chat.jsonl")), "data.layout": "chat",
                          "data.seq_len": 48, "train.num_steps": 8, "eval.every": 8, "eval.num_windows": 4,
                          "data.valid_fraction": 0.2})
  summary = loop.train(config, str(tmp_path / "run"))
  assert np.isfinite(summary["eval_nll_per_token"])
  out = subprocess.run([sys.executable, "-m", "launch.sample", f"--workdir={tmp_path / 'run'}", "--chat",
                        "--length=8", "--steps=4"], input="3 plus 4?\n", capture_output=True, text=True, cwd=REPO,
                       timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("assistant: ") == 1 and "chat template 'plain'" in out.stdout


def test_the_tokenizers_chat_template_frames_prompt_and_response(tmp_path):
  """data.chat_template='tokenizer': the folder's Jinja template (a ChatML one here) renders the prompt with the
  generation prompt, and the response is what the whole conversation adds (its end-of-turn marker included)."""
  pytest.importorskip("jinja2", reason="jinja2 is not installed (pip install -e '.[hf]')")
  folder = tmp_path / "tok"
  shutil.copytree(FIXTURES / "llama", folder)
  config = json.loads((folder / "tokenizer_config.json").read_text())
  config["chat_template"] = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  (folder / "tokenizer_config.json").write_text(json.dumps(config))
  tokenizer = tokenizers.HFTokenizer.from_path(str(folder))
  messages = [{"role": "user", "content": "2 plus 2?"}, {"role": "assistant", "content": "4."}]
  prompt, response = chat.render(messages, "tokenizer", tokenizer)
  assert prompt == "<|im_start|>user\n2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
  assert response == "4.<|im_end|>\n"
  ids = chat.prompt_ids(messages[:1], "tokenizer", tokenizer)
  np.testing.assert_array_equal(ids, tokenizer.encode(prompt))  # no BOS of ours: the template brings its own
  window = chat.encode([(prompt, response)], tokenizer, "tokenizer").window(0, 64, tokenizer.special)
  _, given = special_tokens.split_fixed(window)
  assert given.sum() == len(ids)
  with pytest.raises(ConfigError, match="has no chat_template"):
    chat.render(messages, "tokenizer", tokenizers.HFTokenizer.from_path(str(FIXTURES / "llama")))


def test_the_chat_layout_refuses_objectives_that_cannot_fix_positions(tmp_path):
  config = tiny_config(**{"data.path": str(write_chat(tmp_path / "chat.jsonl")), "data.layout": "chat",
                          "diffusion.objective": "sedd"})
  with pytest.raises(ConfigError, match="data.layout='chat' or 'puzzle' trains objectives"):
    loop.train(config, str(tmp_path / "run"))
  assert "chat" in pipeline.PER_EXAMPLE_LAYOUTS


def test_grouped_query_attention_with_dropout_matches_the_fused_path():
  """The explicit path that attention dropout takes repeats each key/value head for its group of query heads as
  jax.nn.dot_product_attention does (dropout 1e-9: every probability kept)."""
  from dlm_jax.models import layers
  attention = layers.SelfAttention(32, 4, causal=False, implementation="xla", dtype=jnp.float32, rngs=nnx.Rngs(0),
                                   dropout=1e-9, num_kv_heads=2, head_dim=8, qkv_bias=True)
  x = jax.random.normal(jax.random.key(1), (2, 10, 32))
  np.testing.assert_allclose(np.asarray(attention(x, dropout_key=jax.random.key(2))), np.asarray(attention(x)),
                             atol=1e-5)
