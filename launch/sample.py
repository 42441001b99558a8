"""Sample from a trained run with the jitted reverse sampler.

  python -m launch.sample --workdir=DIR [--prompt=TEXT] [--suffix=TEXT] [--num_samples=N] [--steps=S]
                          [--length=L [--continue_chunk=C]]
                          [--method=confidence|ancestral] [--confidence=prob|margin|entropy] [--greedy]
                          [--temperature=T] [--top_k=K] [--top_p=P]
                          [--block_length=B] [--threshold=C] [--confidence_stop=C] [--eos_stop]
                          [--remasking=none|low_confidence|remdm_cap|remdm_loop] [--remask_eta=E]
                          [--guidance_scale=W] [--cache=none|unchanged|dual|prefix]
                          [--verifier=AR_RUN [--verifier_rounds=K] [--verifier_threshold=P]] [--stream] [--mesh=D,F,T]

`--prompt` is fixed at the start, `--suffix` at the end (infilling); `--length` new tokens are generated between them.
`--length` beyond the context with `--continue_chunk=C`: block-wise continuation, each further window keeping the
last context - C tokens fixed and drawing C new ones (dlm_jax/sampling/text.py:continue_past_window has the cost).
The decoding strategies (semi-autoregressive blocks, Fast-dLLM threshold decoding, the adaptive step budget, variable
length with EOS, low-confidence and ReMDM remasking, classifier-free guidance, MDLM's cache) are SamplerConfig's, with
their equations in docs/sampling.md; every flag left out takes the run's config.sample value.
`--verifier=AR_RUN` decodes with the hybrid AR verifier (dlm_jax/sampling/hybrid.py): the causal run AR_RUN, trained
with the same tokenizer, scores the draft and the tokens it doubts are redrawn, `--verifier_rounds` times.
`--stream` replays the first sample's denoising trajectory in the terminal, step by step (with --steps equal to
--length and --reveal_schedule=linear, one token per step). A causal (AR control) run samples left to right (and
streams token by token). A run of a research wing samples with its own sampler here (a thought run: from noise);
the wing's CLI has its own flags (dlm_jax/proj/thought/README.md).

`--hf=PATH` samples a Hugging Face checkpoint folder directly (a BERT/ModernBERT masked LM, or a LLaDA- or
Dream-layout decoder run bidirectionally; training/hf_checkpoints.py), with every strategy above.
`--chat` reads user messages from stdin, one per line, and answers each in the chat template the run was fine-tuned
with (data.chat_template; data/chat.py), keeping the conversation; with `--stream` the answer fills in on screen.

Flags -> one library call (`dlm_jax.sampling.generate`) -> the texts and a summary line.
"""
import sys

import numpy as np
from absl import app, flags, logging

from configs import default
from dlm_jax import cli
from dlm_jax.data import chat
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import display, generate, hybrid
from dlm_jax.training import checkpoint, hf_checkpoints, sharding

cli.define_sample_flags()
flags.DEFINE_string("mesh", "", "Sample on a device mesh DATA,FSDP,TENSOR (e.g. -1,1,1: the batch over every device; "
                    "1,-1,1: the parameters split FSDP-style): rows over data x fsdp, parameters by the logical-axis "
                    "rules. Empty: one device.")
flags.DEFINE_string("verifier", None, "Causal (AR) run that verifies the draft; doubted tokens are redrawn.")
flags.DEFINE_integer("verifier_rounds", 1, "Verify-and-redraw rounds.")
flags.DEFINE_float("verifier_threshold", 0.01, "Redraw generated tokens the verifier gives a probability below this.")
flags.DEFINE_integer("verifier_window", 0, "Also redraw this many tokens after each doubted one.")
flags.DEFINE_integer("verifier_steps", 16, "Reverse steps of each redraw.")
flags.DEFINE_bool("stream", False, "Show the first sample filling in, step by step.")
flags.DEFINE_string("hf", None, "Sample this Hugging Face checkpoint folder (no --workdir): a masked LM (BERT, "
                    "ModernBERT) or a LLaDA/Dream-layout decoder, bidirectional.")
flags.DEFINE_integer("context", None, "--hf: the context (data.seq_len) to sample in (default: the checkpoint's, at "
                     "most 1,024).")
flags.DEFINE_bool("chat", False, "Answer user messages read from stdin (one per line) in the run's chat template, "
                  "keeping the conversation.")
flags.DEFINE_float("stream_delay", 0.05, "Seconds between frames of --stream.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  mesh = sharding.MeshContext.from_flag(FLAGS.mesh)
  if FLAGS.hf:
    run = hf_checkpoints.load_run(FLAGS.hf, default.base_config(), "elbo", seq_len=FLAGS.context, mesh=mesh)
  else:
    run = checkpoint.load_for_inference(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint, mesh=mesh)
  if FLAGS.chat:
    return chat_loop(run, mesh)
  verifier = verifier_config = None
  if FLAGS.verifier:
    verifier = checkpoint.load_for_inference(FLAGS.verifier, weights=FLAGS.weights, which=FLAGS.checkpoint)
    verifier_config = hybrid.VerifierConfig(rounds=FLAGS.verifier_rounds, threshold=FLAGS.verifier_threshold,
                                            window=FLAGS.verifier_window, steps=FLAGS.verifier_steps)
    print(f"# verifier: {verifier.describe()}")
  print(f"# {run.describe()}")
  try:
    result = generate(run, num_samples=FLAGS.num_samples, prompt=FLAGS.prompt, suffix=FLAGS.suffix,
                      length=FLAGS.length, seed=FLAGS.seed, overrides=cli.sampler_overrides(FLAGS),
                      record_trajectory=FLAGS.stream, mesh=mesh, verifier=verifier, verifier_config=verifier_config,
                      continue_chunk=FLAGS.continue_chunk)
  except ConfigError as e:
    raise app.UsageError(f"{f'--hf={FLAGS.hf}' if FLAGS.hf else f'--workdir={FLAGS.workdir}'}: {e}") from e
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if FLAGS.stream:
    display.stream(display.trajectory_frames(run.tokenizer, result.output.trajectory_SxBxL[:, 0]), FLAGS.stream_delay)
  for i, text in enumerate(result.texts):
    print(f"--- sample {i} ---\n{text}")
  print(f"[{result.summary()}]")


def chat_loop(run, mesh):
  """One answer per stdin line (module docstring); the oldest turns are dropped when the prompt would leave fewer
  than --length (default 64) tokens of the context for the answer."""
  template = run.config.data.get("chat_template", "plain")
  seq_len = int(run.config.data.seq_len)
  length = FLAGS.length or min(64, seq_len // 2)
  overrides = {"eos_stop": True, **cli.sampler_overrides(FLAGS)}
  special, history = run.tokenizer.special, []
  print(f"# {run.describe()}; chat template {template!r}; answers of up to {length} tokens. One message per line.")
  for line in sys.stdin:
    if not line.strip():
      continue
    history.append({"role": "user", "content": line.strip()})
    ids = chat.prompt_ids(history, template, run.tokenizer)
    while len(ids) + length > seq_len and len(history) > 1:
      history = history[2:] if len(history) > 2 else history[1:]
      ids = chat.prompt_ids(history, template, run.tokenizer)
    if len(ids) + length > seq_len:
      print(f"# The message takes {len(ids)} tokens; with --length={length} that exceeds the model's {seq_len}-token "
            "context: shorten it or lower --length.", flush=True)
      history.pop()
      continue
    result = generate(run, num_samples=1, prompt_ids=ids, length=length, seed=FLAGS.seed, overrides=overrides,
                      record_trajectory=FLAGS.stream, mesh=mesh)
    answer_ids = np.asarray(result.output.tokens_BxL)[0, len(ids):len(ids) + length]
    ends = np.flatnonzero(answer_ids == special.eos)
    answer_ids = answer_ids[:ends[0]] if len(ends) else answer_ids
    answer = run.tokenizer.decode(answer_ids[~np.isin(answer_ids, [special.pad, special.mask])])
    if FLAGS.stream:
      frames = display.trajectory_frames(run.tokenizer, result.output.trajectory_SxBxL[:, 0, len(ids):])
      display.stream(frames, FLAGS.stream_delay)
      print()
    print(f"assistant: {answer}", flush=True)
    history.append({"role": "assistant", "content": answer})


if __name__ == "__main__":
  cli.run(main)
