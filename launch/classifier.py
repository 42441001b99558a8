"""Trains a property classifier on a run's noisy states: the guide of plug-and-play control (launch.control).

  python -m launch.classifier --workdir=RUN [--classifier_dir=RUN/classifier_script] [--property=script]
                              [--steps=2000] [--batch_size=64] [--learning_rate=1e-3] [--width=64] [--num_layers=2]

RUN is a masked-diffusion run (the classifier reads its partially masked tokens) or an embedding-diffusion run (it
reads that run's noisy latents, so it guides that run and checkpoint only). The windows are the run's own training
text, labelled by the property's exact rule (dlm_jax/evaluation/control.py); the classifier and its held-out accuracy
at t = 0, 0.5, 0.8, 0.95 are saved to --classifier_dir (dlm_jax/training/classifier.py).
"""
from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.errors import ConfigError
from dlm_jax.training import checkpoint
from dlm_jax.training import classifier as classifier_lib

flags.DEFINE_string("workdir", None, "The diffusion run whose sampler the classifier will guide.", required=True)
flags.DEFINE_string("classifier_dir", "", "Where to save it (default: WORKDIR/classifier_PROPERTY).")
flags.DEFINE_string("property", "script", "The property to classify (dlm_jax/evaluation/control.PROPERTIES).")
flags.DEFINE_integer("steps", 2000, "Training updates.")
flags.DEFINE_integer("batch_size", 64, "Windows per update.")
flags.DEFINE_float("learning_rate", 1e-3, "AdamW peak learning rate (warmup 5%, cosine decay).")
flags.DEFINE_integer("width", 64, "Classifier width.")
flags.DEFINE_integer("num_layers", 2, "Classifier transformer blocks.")
flags.DEFINE_integer("max_windows", 16384, "Labelled training windows drawn from the run's training text.")
flags.DEFINE_integer("seed", 0, "Seed of the windows, the initialization and the noise.")
cli.define_checkpoint_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  for name in ("steps", "batch_size", "width", "num_layers", "max_windows"):
    if getattr(FLAGS, name) < 1:
      raise app.UsageError(f"--{name}={getattr(FLAGS, name)} must be >= 1.")
  try:
    run = checkpoint.load_for_inference(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
    trained = classifier_lib.train(run, FLAGS.property, steps=FLAGS.steps, batch_size=FLAGS.batch_size,
                                   learning_rate=FLAGS.learning_rate, width=FLAGS.width, num_layers=FLAGS.num_layers,
                                   max_windows=FLAGS.max_windows, seed=FLAGS.seed)
  except (ConfigError, ValueError) as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir} --property={FLAGS.property}: {e}") from e
  directory = FLAGS.classifier_dir or f"{FLAGS.workdir}/classifier_{FLAGS.property}"
  classifier_lib.save(directory, trained)
  print(f"Saved the {FLAGS.property} classifier of {run.describe()} to {directory}.")


if __name__ == "__main__":
  cli.run(main)
