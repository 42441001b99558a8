"""Export a run as a Hugging Face checkpoint folder that `transformers` loads (training/hf_checkpoints.export_run).

  python -m launch.export --workdir=RUN --hf=OUT [--checkpoint=latest|best] [--weights=ema|raw]

Writes OUT/model.safetensors, OUT/config.json (the family's transformers class: BertForMaskedLM,
ModernBertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM), OUT/tokenizer.json and
OUT/tokenizer_config.json (with the pad/mask tokens the run added). A run fine-tuned from an import
(`--init_from=hf:PATH`) goes back to its family, LoRA adapters merged; a baseline transformer trained here with a
Hugging Face tokenizer (RoPE, no time conditioning, no self-conditioning) is written in the LLaMA layout with tied
embeddings. A bidirectional (diffusion) model keeps the class's name, so transformers' causal mask must be replaced
by a full one to run it as trained (as LLaDA's and Dream's own code does). `--init_from=hf:OUT` or `launch.sample
--hf=OUT` read the folder back, bit for bit.
"""
from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.errors import ConfigError
from dlm_jax.training import checkpoint, hf_checkpoints

flags.DEFINE_string("workdir", None, "The run to export.", required=True)
flags.DEFINE_string("hf", None, "Output folder (created; its files are replaced).", required=True)
cli.define_checkpoint_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run = checkpoint.load_for_inference(FLAGS.workdir, weights=FLAGS.weights, which=FLAGS.checkpoint)
  try:
    info = hf_checkpoints.export_run(run, FLAGS.hf)
  except ConfigError as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir}: {e}") from e
  print(f"Exported {run.describe()} to {FLAGS.hf}: {info['tensors']} tensors, {info['parameters']:,} parameters, "
        f"{info['bytes'] / 1e6:.1f} MB ({run.config.model.get('family') or 'llama'} layout).")


if __name__ == "__main__":
  cli.run(main)
