"""Train a masked-diffusion (or AR control) LM.

  python -m launch.train [--config=configs/NAME.py[:ARG]] [--workdir=DIR] [--config.a.b=value ...]

With no flags: the embedded default (configs/default.py) into runs/default. Re-running with the same --workdir
resumes from its latest checkpoint. `--init_from=hf:PATH` starts from a Hugging Face checkpoint (its weights,
architecture and tokenizer; docs/pretrained.md), e.g. seed 002's recipe, a BERT fine-tuned with the masked NELBO:

  python -m launch.train --init_from=hf:bert-base-uncased/ --config.data.path=CORPUS --workdir=runs/bert_dlm

Several devices: --config.mesh.data/fsdp/tensor shape the mesh (dlm_jax/training/sharding.py). Several hosts: start the
same command on each; under SLURM (srun, one task per host) JAX finds its peers itself; elsewhere pass
--coordinator_address=HOST0:PORT --num_processes=N --process_id=I (docs/scale-out.md).
"""
import pathlib

from absl import flags, logging

from dlm_jax import cli
from ml_collections import config_flags

from dlm_jax.training import loop, sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
cli.config_preflight(str(REPO / "configs" / "default.py"))  # --help_config; unknown --config.FIELD named at once
config_flags.DEFINE_config_file("config", str(REPO / "configs" / "default.py"), "Experiment config file.",
                                lock_config=True)
flags.DEFINE_bool("help_config", False, "Print every field of --config with its value, then exit.")
flags.DEFINE_string("workdir", "runs/default", "Directory for checkpoints, metrics and the token cache.")
flags.DEFINE_string("init_from", None, "hf:PATH: fine-tune a Hugging Face checkpoint folder (BERT, ModernBERT, GPT-2, "
                    "LLaMA, Qwen2/Dream): its weights, architecture and tokenizer (= --config.train.init_from).")
flags.DEFINE_enum("distributed", "auto", sharding.DISTRIBUTED_MODES,
                  "Multi-host start-up (jax.distributed.initialize): 'auto' when a coordinator address is given or a "
                  "SLURM/Open MPI launch with several tasks is detected; 'on' always; 'off' never.")
flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0, reachable from every process (multi-host "
                    "without SLURM); with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", 0, "Number of processes of a multi-host run (with --coordinator_address).")
flags.DEFINE_integer("process_id", -1, "This process's index, 0 .. num_processes - 1 (with --coordinator_address).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; our progress lines are printed
  FLAGS = flags.FLAGS
  sharding.initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  if sharding.is_primary():
    print("\n".join(cli.config_summary(str(REPO / "configs" / "default.py"))), flush=True)
  config = flags.FLAGS.config
  if FLAGS.init_from is not None:
    with config.unlocked():
      config.train.init_from = FLAGS.init_from
  summary = loop.train(config, flags.FLAGS.workdir)
  status = "stopped early" if summary["stopped"] else "finished"
  print(f"Training {status} at step {summary['step']}; checkpoint in {flags.FLAGS.workdir}/checkpoints. "
        f"Sample with: python -m launch.sample --workdir={flags.FLAGS.workdir}")


# The --config fields a newcomer sets first, shown (with what each means) before absl's list on --help.
FIRST_FIELDS = ("data.path", "data.seq_len", "train.num_steps", "train.batch_size", "optimizer.learning_rate",
                "model.num_layers", "model.width", "diffusion.objective", "eval.every", "sample.num_samples")

if __name__ == "__main__":
  cli.run(main, first_help=lambda: cli.newcomer_help(FIRST_FIELDS, str(REPO / "configs" / "default.py")))
