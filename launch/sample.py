"""Sample from a trained run with the jitted reverse sampler.

  python -m launch.sample --workdir=DIR [--prompt=TEXT] [--suffix=TEXT] [--num_samples=N] [--steps=S] [--length=L]
                          [--method=confidence|ancestral] [--confidence=prob|margin|entropy] [--greedy]
                          [--temperature=T] [--top_k=K] [--top_p=P]
                          [--block_length=B] [--threshold=C] [--confidence_stop=C] [--eos_stop]
                          [--remasking=none|low_confidence|remdm_cap|remdm_loop] [--remask_eta=E]
                          [--guidance_scale=W] [--cache=none|unchanged|dual|prefix]
                          [--verifier=AR_RUN [--verifier_rounds=K] [--verifier_threshold=P]] [--stream] [--mesh=D,F,T]

`--prompt` is fixed at the start, `--suffix` at the end (infilling); `--length` new tokens are generated between them.
The decoding strategies (semi-autoregressive blocks, Fast-dLLM threshold decoding, the adaptive step budget, variable
length with EOS, low-confidence and ReMDM remasking, classifier-free guidance, MDLM's cache) are SamplerConfig's, with
their equations in docs/sampling.md; every flag left out takes the run's config.sample value.
`--verifier=AR_RUN` decodes with the hybrid AR verifier (dlm_jax/sampling/hybrid.py): the causal run AR_RUN, trained
with the same tokenizer, scores the draft and the tokens it doubts are redrawn, `--verifier_rounds` times.
`--stream` replays the first sample's denoising trajectory in the terminal, step by step (with --steps equal to
--length and --reveal_schedule=linear, one token per step). A causal (AR control) run samples left to right (and
streams token by token). A run of a research wing samples with its own sampler here (a thought run: from noise);
the wing's CLI has its own flags (dlm_jax/proj/thought/README.md).

Flags -> one library call (`dlm_jax.sampling.generate`) -> the texts and a summary line.
"""
from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import display, generate, hybrid
from dlm_jax.training import checkpoint, sharding

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
flags.DEFINE_float("stream_delay", 0.05, "Seconds between frames of --stream.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  mesh = sharding.MeshContext.from_flag(FLAGS.mesh)
  run = checkpoint.load_for_inference(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint, mesh=mesh)
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
                      record_trajectory=FLAGS.stream, mesh=mesh, verifier=verifier, verifier_config=verifier_config)
  except ConfigError as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir}: {e}") from e
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if FLAGS.stream:
    display.stream(display.trajectory_frames(run.tokenizer, result.output.trajectory_SxBxL[:, 0]), FLAGS.stream_delay)
  for i, text in enumerate(result.texts):
    print(f"--- sample {i} ---\n{text}")
  print(f"[{result.summary()}]")


if __name__ == "__main__":
  cli.run(main)
