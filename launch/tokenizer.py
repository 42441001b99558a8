"""Train a SentencePiece tokenizer with dlm_jax's reserved ids (pad 0, bos 1, eos 2, <mask> 3, unk 4).

  python -m launch.tokenizer --input=en/tinyshakespeare.txt,hi/dakshina_wiki.txt --vocab_size=32000 \
      --output=runs/spm32k/spm.model

Inputs are files or folders, comma-separated, relative to the working directory or $DLM_DATA_DIR (../shared/data).
Byte fallback and identity normalization make every UTF-8 text round-trip exactly (English, Devanagari Hindi with
nukta forms, romanized Hinglish, emoji). The output is written atomically; use it with
--config.data.tokenizer=sentencepiece --config.data.tokenizer_path=PATH.
"""
from absl import flags

from dlm_jax import cli
from dlm_jax.data import tokenizers

flags.DEFINE_string("input", None, "Training text: files/folders, comma-separated.", required=True)
flags.DEFINE_integer("vocab_size", 32000, "Vocabulary size, reserved ids included.")
flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "SentencePiece model type.")
flags.DEFINE_string("output", "runs/spm/spm.model", "Where to write the .model file.")
flags.DEFINE_integer("input_sentence_size", 2_000_000, "Lines sampled for training (0 = all).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  tok = tokenizers.train_sentencepiece_to_file(FLAGS.input, FLAGS.output, FLAGS.vocab_size, FLAGS.model_type,
                                               FLAGS.input_sentence_size)
  print(f"Wrote {FLAGS.output} (vocab {tok.vocab_size}, trained on {FLAGS.input}).")


if __name__ == "__main__":
  cli.run(main)
