"""Sample from a trained run with the jitted reverse sampler.

  python -m launch.sample --workdir=DIR [--prompt=TEXT] [--suffix=TEXT] [--num_samples=N] [--steps=S] [--length=L]
                          [--method=confidence|ancestral] [--confidence=prob|margin|entropy] [--greedy]
                          [--temperature=T] [--top_k=K] [--top_p=P]
                          [--block_length=B] [--threshold=C] [--confidence_stop=C] [--eos_stop]
                          [--remasking=none|low_confidence|remdm_cap|remdm_loop] [--remask_eta=E]
                          [--guidance_scale=W] [--cache=none|unchanged|dual|prefix]
                          [--verifier=AR_RUN [--verifier_rounds=K] [--verifier_threshold=P]] [--stream]
                          thought runs: [--thought_in=T.npy [--interpolate_with=U.npy --interpolate_alpha=A]
                          [--thought_t_start=T]] [--thought_out=NEXT.npy] [--steer_toward=GOAL.npy --steer_scale=E]
                          [--trajectory_out=TRAJ.npz]

`--prompt` is fixed at the start, `--suffix` at the end (infilling); `--length` new tokens are generated between them.
The decoding strategies (semi-autoregressive blocks, Fast-dLLM threshold decoding, the adaptive step budget, variable
length with EOS, low-confidence and ReMDM remasking, classifier-free guidance, MDLM's cache) are SamplerConfig's, with
their equations in docs/sampling.md; every flag left out takes the run's config.sample value.
`--verifier=AR_RUN` decodes with the hybrid AR verifier (dlm_jax/sampling/hybrid.py): the causal run AR_RUN, trained
with the same tokenizer, scores the draft and the tokens it doubts are redrawn, `--verifier_rounds` times.
A thought run (config.thought; dlm_jax/sampling/thought.py) samples one window with its thought: from noise, or
`--thought_in` (persistence: the memory an earlier generation wrote with `--thought_out`, kept clean; with
`--thought_t_start` > 0 noised to that time and denoised), blended first with `--interpolate_with` at
`--interpolate_alpha` (interpolation), steered towards `--steer_toward` by `--steer_scale` (gradient steering);
`--thought_out` saves the next generation's memory push(thought, evolved thought) as .npy, `--trajectory_out` the text
and thought at every step as .npz.
`--stream` replays the first sample's denoising trajectory in the terminal, step by step (with --steps equal to
--length and --reveal_schedule=linear, one token per step). A causal (AR control) run samples left to right (and
streams token by token).
"""
import dataclasses
import time

import jax
import numpy as np
from absl import app, flags, logging

from dlm_jax import cli, special_tokens
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import SamplerConfig, display, make_text_sampler, prompt_batch
from dlm_jax.sampling import sampler as sampler_lib
from dlm_jax.training import checkpoint, sharding

flags.DEFINE_string("workdir", "runs/default", "Training run to sample from.")
flags.DEFINE_string("prompt", "", "Text fixed at the start of every sample.")
flags.DEFINE_string("suffix", "", "Text fixed at the end (infilling between --prompt and --suffix).")
flags.DEFINE_integer("num_samples", 4, "Batch size.")
flags.DEFINE_string("mesh", "", "Sample on a device mesh DATA,FSDP,TENSOR (e.g. -1,1,1: the batch over every device; "
                    "1,-1,1: the parameters split FSDP-style): rows over data x fsdp, parameters by the logical-axis "
                    "rules. Empty: one device.")
flags.DEFINE_integer("steps", None, "Reverse steps (default: the run's config.sample.steps).")
flags.DEFINE_integer("length", None, "New tokens to generate (default: fill the model's context).")
flags.DEFINE_enum("method", None, list(sampler_lib.METHODS), "Sampler (default: the run's config): confidence or "
                  "ancestral for masked models; ancestral or greedy for uniform-state (Duo) ones; tweedie for SEDD.")
flags.DEFINE_enum("confidence", None, list(sampler_lib.CONFIDENCES), "What ranks the masked positions for reveal "
                  "(default: the run's config): the candidate's probability (prob), the top-2 margin (margin) or the "
                  "predictive entropy, lowest first (entropy).")
flags.DEFINE_bool("greedy", None, "Argmax candidates instead of sampling them.")
flags.DEFINE_float("temperature", None, "Sampling temperature.")
flags.DEFINE_integer("top_k", None, "Top-k filtering (0 = off).")
flags.DEFINE_float("top_p", None, "Nucleus filtering (1.0 = off).")
flags.DEFINE_string("reveal_schedule", None, "Reveal schedule (linear, cosine, ...; default: the training schedule).")
flags.DEFINE_float("reveal_noise", None, "MaskGIT choice temperature on the reveal ranking (0 = pure confidence).")
flags.DEFINE_float("strategic_weight", None, "HRM denoiser: weight of the H-module's priority in the reveal ranking.")
flags.DEFINE_integer("block_length", None, "Semi-autoregressive blocks of this many new tokens (0: one block).")
flags.DEFINE_float("threshold", None, "Fast-dLLM: reveal every masked token with confidence above this (0: off).")
flags.DEFINE_float("confidence_stop", None, "Reveal the rest of a block once all its confidences reach this (0: off).")
flags.DEFINE_bool("eos_stop", None, "Variable length: nothing after the first generated EOS is kept.")
flags.DEFINE_enum("remasking", None, list(sampler_lib.REMASKING), "Remasking policy (ReMDM needs --method=ancestral).")
flags.DEFINE_float("remask_eta", None, "ReMDM's eta, or low_confidence's fraction remasked per step.")
flags.DEFINE_float("remask_t_on", None, "remdm_loop: start of the loop.")
flags.DEFINE_float("remask_t_off", None, "remdm_loop: end of the loop; low_confidence: last remasking time.")
flags.DEFINE_float("remask_alpha_on", None, "remdm_loop: alpha held during the loop.")
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance w: (1 + w) cond - w (prompt masked); 0: off.")
flags.DEFINE_enum("cache", None, list(sampler_lib.CACHES), "'unchanged': skip the network when no token changed; "
                  "'dual'/'prefix': Fast-dLLM's KV caches (block decoding).")
flags.DEFINE_string("verifier", None, "Causal (AR) run that verifies the draft; doubted tokens are redrawn.")
flags.DEFINE_integer("verifier_rounds", 1, "Verify-and-redraw rounds.")
flags.DEFINE_float("verifier_threshold", 0.01, "Redraw generated tokens the verifier gives a probability below this.")
flags.DEFINE_integer("verifier_window", 0, "Also redraw this many tokens after each doubted one.")
flags.DEFINE_integer("verifier_steps", 16, "Reverse steps of each redraw.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_bool("stream", False, "Show the first sample filling in, step by step.")
flags.DEFINE_float("stream_delay", 0.05, "Seconds between frames of --stream.")
flags.DEFINE_string("thought_in", "", "Thought run: start from this thought (.npy of model.thought_dims, or one per "
                    "sample), e.g. an earlier --thought_out.")
flags.DEFINE_string("thought_out", "", "Thought run: save the next generation's thought (memory with this "
                    "generation's evolved thought pushed in) as .npy.")
flags.DEFINE_string("interpolate_with", "", "Thought run: blend --thought_in with this thought (.npy) first.")
flags.DEFINE_float("interpolate_alpha", 0.5, "Blend weight of --interpolate_with: (1 - a) thought_in + a other.")
flags.DEFINE_float("thought_t_start", 0.0, "Thought run: noise the start thought to this time and denoise it (0: "
                   "keep it clean).")
flags.DEFINE_string("steer_toward", "", "Thought run: steer the thought towards this thought (.npy).")
flags.DEFINE_float("steer_scale", 0.1, "Steering step: the fraction of the way to --steer_toward per network call.")
flags.DEFINE_string("trajectory_out", "", "Thought run: save the text and thought trajectories as .npz.")
cli.define_checkpoint_flags()
FLAGS = flags.FLAGS


SAMPLER_FLAGS = ("steps", "method", "confidence", "greedy", "temperature", "top_k", "top_p", "reveal_schedule",
                 "reveal_noise", "strategic_weight") + sampler_lib.STRATEGY_FIELDS


def verified_texts(run, cfg, tokens, fixed):
  """(texts, output) of the hybrid AR-verifier decoder, the verifier being the causal run --verifier."""
  from dlm_jax.evaluation import generation
  from dlm_jax.sampling import hybrid
  verifier = checkpoint.load_for_inference(FLAGS.verifier, weights=FLAGS.weights, which=FLAGS.checkpoint)
  try:
    generation.check_judge(run, verifier, flag="--verifier")
    vcfg = hybrid.VerifierConfig(rounds=FLAGS.verifier_rounds, threshold=FLAGS.verifier_threshold,
                                 window=FLAGS.verifier_window, steps=FLAGS.verifier_steps)
  except (ValueError, ConfigError) as e:
    raise app.UsageError(str(e)) from e
  sample_fn = hybrid.make_verified_sampler(run.graphdef, run.other, verifier.graphdef, verifier.other, cfg, vcfg)
  output = sample_fn(run.params, verifier.params, jax.random.key(FLAGS.seed), tokens, fixed)
  print(f"# verifier: {verifier.describe()}; rejected per round: "
        f"{[int(r.sum()) for r in np.asarray(output.rejected_RxB)]} tokens")
  return [run.tokenizer.decode(row) for row in np.asarray(output.tokens_BxL)], output


THOUGHT_FLAGS = ("thought_in", "thought_out", "interpolate_with", "steer_toward", "trajectory_out")


def thought_main(run, cfg, tokens, fixed):
  """Sample a thought run (module docstring): texts, thought files."""
  from dlm_jax.sampling import thought
  dims = run.model_config.thought_dims
  batch = tokens.shape[0]
  try:
    load = lambda flag: thought.load_thought(getattr(FLAGS, flag), dims, batch, f"--{flag}")
    steer = FLAGS.steer_toward and thought.distance_property(load("steer_toward"))
    if FLAGS.interpolate_with and not FLAGS.thought_in:
      raise ValueError("--interpolate_with blends with --thought_in: give both.")
    if not 0.0 <= FLAGS.thought_t_start <= 1.0:
      raise ValueError(f"--thought_t_start={FLAGS.thought_t_start} must be in [0, 1].")
    if FLAGS.thought_in:  # (without --interpolate_with: the blend of --thought_in with itself at 0, i.e. itself)
      thought_in = load("thought_in")
      other, alpha = (thought_in, 0.0)
      if FLAGS.interpolate_with:
        other, alpha = load("interpolate_with"), FLAGS.interpolate_alpha
      start = thought.interpolation_start(jax.random.key(FLAGS.seed + 1), thought_in, other, alpha,
                                          FLAGS.thought_t_start, thought.process_of(run.model_config, cfg),
                                          thought.noise_schedule(cfg))
    else:
      start = thought.from_noise(jax.random.key(FLAGS.seed + 1), batch, dims)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if steer:
    cfg = dataclasses.replace(cfg, steer_scale=FLAGS.steer_scale)
  cfg = dataclasses.replace(cfg, record_trajectory=bool(FLAGS.trajectory_out) or cfg.record_trajectory)
  result = thought.make_thought_sampler(run.graphdef, run.other, cfg, steer or None)(
      run.params, jax.random.key(FLAGS.seed), tokens, fixed, start)
  if FLAGS.thought_out:
    np.save(FLAGS.thought_out, np.asarray(result.next_memory_BxT))
    print(f"# next thought {tuple(result.next_memory_BxT.shape)} saved to {FLAGS.thought_out}")
  if FLAGS.trajectory_out:
    np.savez(FLAGS.trajectory_out, text=np.asarray(result.text.trajectory_SxBxL),
             estimate=np.asarray(result.estimate_trajectory), noisy=np.asarray(result.noisy_trajectory),
             evolved=np.asarray(result.evolved_trajectory), calls=int(result.thought_calls))
    print(f"# trajectories saved to {FLAGS.trajectory_out}")
  return [run.tokenizer.decode(row) for row in np.asarray(result.text.tokens_BxL)], result.text


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  mesh = sharding.MeshContext.from_flag(FLAGS.mesh)
  run = checkpoint.load_for_inference(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint, mesh=mesh)
  autoregressive = run.objective.is_autoregressive
  thought_run = run.objective.thought is not None
  used = [f"--{flag}" for flag in THOUGHT_FLAGS if getattr(FLAGS, flag)]
  if used and not thought_run:
    raise app.UsageError(f"{', '.join(used)}: --workdir={FLAGS.workdir} is not a thought run (config.thought).")
  if thought_run and (FLAGS.verifier or mesh is not None):
    raise app.UsageError("A thought run samples on one device without --verifier.")
  try:
    tokens, fixed = prompt_batch(run.tokenizer, FLAGS.num_samples,
                                 run.objective.sample_length(int(run.config.data.seq_len)), FLAGS.length,
                                 FLAGS.prompt, FLAGS.suffix, autoregressive)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  overrides = {k: getattr(FLAGS, k) for k in SAMPLER_FLAGS if getattr(FLAGS, k) is not None}
  try:
    cfg = SamplerConfig.from_config(run.config, **overrides, record_trajectory=FLAGS.stream)
  except ConfigError as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir}: {e}") from e
  if FLAGS.verifier and (autoregressive or FLAGS.stream):
    raise app.UsageError("--verifier checks a diffusion run's draft (not a causal run's), without --stream.")
  print(f"# {run.describe()}")
  start = time.perf_counter()
  try:
    if thought_run:
      texts, output = thought_main(run, cfg, tokens, fixed)
    elif FLAGS.verifier:
      texts, output = verified_texts(run, cfg, tokens, fixed)
    else:
      sample_texts = make_text_sampler(run.graphdef, run.other, run.tokenizer, cfg, autoregressive)
      if mesh is not None:
        sample_texts, tokens, fixed = mesh.bind(sample_texts), mesh.place_rows(tokens), mesh.place_rows(fixed)
      samples = sample_texts(run.params, jax.random.key(FLAGS.seed), tokens, fixed)
      texts, output = samples.texts, samples.output
  except ConfigError as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir}: {e}") from e
  elapsed = time.perf_counter() - start
  if FLAGS.stream:
    display.stream(display.trajectory_frames(run.tokenizer, output.trajectory_SxBxL[:, 0]), FLAGS.stream_delay)
  for i, text in enumerate(texts):
    print(f"--- sample {i} ---\n{text}")
  summary = f"{FLAGS.num_samples} x {int((~fixed[0]).sum())} new tokens in {elapsed:.2f} s including compilation"
  if getattr(output, "steps_B", None) is not None:
    summary += f"; steps per sample {np.asarray(output.steps_B).tolist()}"
  if getattr(output, "network_calls", None) is not None:
    summary += f"; network calls {int(output.network_calls)}"
  if cfg.eos_stop:
    tokens_BxL = np.asarray(output.tokens_BxL)
    kept_BxL = ~fixed & ~np.isin(tokens_BxL, [special_tokens.PAD, special_tokens.EOS])
    summary += f"; lengths {kept_BxL.sum(-1).tolist()}"
  print(f"[{summary}]")


if __name__ == "__main__":
  cli.run(main)
