"""Sample a thought run with its thought: persistence, interpolation, steering, trajectories (README.md).

  python -m dlm_jax.proj.thought.sample --workdir=RUN [every launch.sample flag but --verifier/--mesh/--stream]
      [--thought_in=T.npy [--interpolate_with=U.npy --interpolate_alpha=A] [--thought_t_start=T]]
      [--thought_out=NEXT.npy] [--steer_toward=GOAL.npy --steer_scale=E] [--trajectory_out=TRAJ.npz]

One window is generated with its thought: from noise, or `--thought_in` (persistence: the memory an earlier generation
wrote with `--thought_out`, kept clean; with `--thought_t_start` > 0 noised to that time and denoised), blended first
with `--interpolate_with` at `--interpolate_alpha` (interpolation), steered towards `--steer_toward` by
`--steer_scale` (gradient steering); `--thought_out` saves the next generation's memory push(thought, evolved
thought) as .npy, `--trajectory_out` the text and thought at every step as .npz.
Flags -> one library call (`sampler.generate`) -> the texts and the files.
"""
import numpy as np
from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.errors import ConfigError
from dlm_jax.proj.thought import metrics as thought_metrics
from dlm_jax.proj.thought import sampler as thought_sampler

cli.define_sample_flags()
flags.DEFINE_string("thought_in", "", "Start from this thought (.npy of model.thought_dims, or one per sample), e.g. an "
                    "earlier --thought_out.")
flags.DEFINE_string("thought_out", "", "Save the next generation's thought (memory with this generation's evolved "
                    "thought pushed in) as .npy.")
flags.DEFINE_string("interpolate_with", "", "Blend --thought_in with this thought (.npy) first.")
flags.DEFINE_float("interpolate_alpha", 0.5, "Blend weight of --interpolate_with: (1 - a) thought_in + a other.")
flags.DEFINE_float("thought_t_start", 0.0, "Noise the start thought to this time and denoise it (0: keep it clean).")
flags.DEFINE_string("steer_toward", "", "Steer the thought towards this thought (.npy).")
flags.DEFINE_float("steer_scale", 0.1, "Steering step: the fraction of the way to --steer_toward per network call.")
flags.DEFINE_string("trajectory_out", "", "Save the text and thought trajectories as .npz.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run = thought_metrics.load_thought_run(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
  print(f"# {run.describe()}")
  dims = run.model_config.thought_dims
  load = lambda flag: (thought_sampler.load_thought(getattr(FLAGS, flag), dims, FLAGS.num_samples, f"--{flag}")
                       if getattr(FLAGS, flag) else None)
  try:
    texts, result = thought_sampler.generate(
        run, num_samples=FLAGS.num_samples, prompt=FLAGS.prompt, suffix=FLAGS.suffix, length=FLAGS.length,
        seed=FLAGS.seed, overrides=cli.sampler_overrides(FLAGS), thought_in=load("thought_in"),
        interpolate_with=load("interpolate_with"), interpolate_alpha=FLAGS.interpolate_alpha,
        thought_t_start=FLAGS.thought_t_start, steer_toward=load("steer_toward"), steer_scale=FLAGS.steer_scale,
        record_trajectory=bool(FLAGS.trajectory_out))
  except ConfigError as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir}: {e}") from e
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if FLAGS.thought_out:
    np.save(FLAGS.thought_out, np.asarray(result.next_memory_BxT))
    print(f"# next thought {tuple(result.next_memory_BxT.shape)} saved to {FLAGS.thought_out}")
  if FLAGS.trajectory_out:
    np.savez(FLAGS.trajectory_out, text=np.asarray(result.text.trajectory_SxBxL),
             estimate=np.asarray(result.estimate_trajectory), noisy=np.asarray(result.noisy_trajectory),
             evolved=np.asarray(result.evolved_trajectory), calls=int(result.thought_calls))
    print(f"# trajectories saved to {FLAGS.trajectory_out}")
  for i, text in enumerate(texts):
    print(f"--- sample {i} ---\n{text}")


if __name__ == "__main__":
  cli.run(main)
