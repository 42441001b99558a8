"""Train a masked-diffusion (or AR control) LM.

  python -m launch.train [--config=configs/NAME.py[:ARG]] [--workdir=DIR] [--config.a.b=value ...]

With no flags: the embedded default (configs/default.py) into runs/default. Re-running with the same --workdir
resumes from its latest checkpoint.
"""
import os
import pathlib

from absl import flags, logging

from dlm_jax import cli
from ml_collections import config_flags

from dlm_jax.training import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
cli.config_preflight(str(REPO / "configs" / "default.py"))  # --help_config; unknown --config.FIELD named at once
config_flags.DEFINE_config_file("config", str(REPO / "configs" / "default.py"), "Experiment config file.",
                                lock_config=True)
flags.DEFINE_bool("help_config", False, "Print every field of --config with its value, then exit.")
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, metrics and the token cache.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; our progress lines are printed
  os.makedirs(flags.FLAGS.workdir, exist_ok=True)
  summary = loop.train(flags.FLAGS.config, flags.FLAGS.workdir)
  status = "stopped early" if summary["stopped"] else "finished"
  print(f"Training {status} at step {summary['step']}; checkpoint in {flags.FLAGS.workdir}/checkpoints. "
        f"Sample with: python -m launch.sample --workdir={flags.FLAGS.workdir}")


if __name__ == "__main__":
  cli.run(main)
