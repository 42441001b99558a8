"""Train a SentencePiece tokenizer with dlm_jax's reserved ids (pad 0, bos 1, eos 2, <mask> 3, unk 4) or a byte-level
BPE in GPT-2's layout (a Hugging Face tokenizer folder), or report how a tokenizer cuts each script.

  python -m launch.tokenizer --input=en/tinyshakespeare.txt,hi/dakshina_wiki.txt --vocab_size=32000 \
      --output=runs/spm32k/spm.model
  python -m launch.tokenizer --input=en/,hi/ --model_type=byte_bpe --vocab_size=8000 --output=runs/bpe8k
      # then --config.data.tokenizer=hf:runs/bpe8k (GPT-2's layout: <|endoftext|>, pad and mask past the vocabulary)
  python -m launch.tokenizer --report --model=runs/spm32k/spm.model      # or --workdir=RUN: the run's own tokenizer
      [--report_paths=en/wikitext2_valid.tokens.txt,hi/valid_flores_ntrex.txt,hinglish/lince_mt_dev.txt] [--json]

Inputs are files or folders, comma-separated, relative to the working directory or $DLM_DATA_DIR (../shared/data).
Byte fallback and identity normalization make every UTF-8 text round-trip exactly (English, Devanagari Hindi with
nukta forms, romanized Hinglish, emoji). The output is written atomically; use it with
--config.data.tokenizer=sentencepiece --config.data.tokenizer_path=PATH.

--report prints, per validation file and per script of its words (Devanagari, Latin, other, mixed, none), the
fertility (tokens per word) and characters per token of the tokenizer next to a byte-level baseline (one token per
UTF-8 byte), and the byte-fallback and <unk> rates of the whole file (dlm_jax/evaluation/tokenization.py). With
--input and --report together, the freshly trained model is reported.
"""
import json

from absl import app, flags

from dlm_jax import cli
from dlm_jax.data import corpus, tokenizers
from dlm_jax.evaluation import tokenization

DEFAULT_REPORT_PATHS = ("en/wikitext2_valid.tokens.txt,hi/valid_flores_ntrex.txt,hinglish/lince_mt_dev.txt,"
                        "hinglish/cmdialog_dev.txt")
flags.DEFINE_string("input", None, "Training text: files/folders, comma-separated.")
flags.DEFINE_integer("vocab_size", 32000, "Vocabulary size, reserved ids included.")
flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram", "byte_bpe"], "SentencePiece's 'bpe' or 'unigram' (a .model "
                  "file), or 'byte_bpe': a byte-level BPE in GPT-2's layout, written as a Hugging Face tokenizer folder "
                  "(the `tokenizers` library).")
flags.DEFINE_string("output", "runs/spm/spm.model", "Where to write the .model file.")
flags.DEFINE_integer("input_sentence_size", 2_000_000, "Lines sampled for training (0 = all).")
flags.DEFINE_bool("report", False, "Report fertility and characters per token per script on --report_paths.")
flags.DEFINE_string("model", None, "--report: a SentencePiece .model file to report on.")
flags.DEFINE_string("workdir", None, "--report: a training run whose tokenizer (char or SentencePiece) to report on.")
flags.DEFINE_string("report_paths", DEFAULT_REPORT_PATHS, "--report: validation files, comma-separated, one row "
                    "group each.")
flags.DEFINE_bool("json", False, "--report: print the reports as JSON instead of a table.")
FLAGS = flags.FLAGS


def tokenizer_to_report():
  if sum(x is not None for x in (FLAGS.input, FLAGS.model, FLAGS.workdir)) != 1:
    raise app.UsageError("--report needs exactly one of --input (train, then report), --model=SPM.model or "
                         "--workdir=RUN.")
  if FLAGS.model:
    return tokenizers.SentencePieceTokenizer.from_file(FLAGS.model), FLAGS.model
  from dlm_jax.training import checkpoint
  run = checkpoint.load_for_inference(FLAGS.workdir)
  return run.tokenizer, f"{FLAGS.workdir} ({run.tokenizer.kind})"


def main(argv):
  del argv
  if FLAGS.input is not None and FLAGS.model_type == "byte_bpe":
    texts = corpus.load_documents(FLAGS.input, "--input").docs
    tok = tokenizers.train_byte_level_bpe(texts, FLAGS.output, FLAGS.vocab_size)
    print(f"Wrote {FLAGS.output}/tokenizer.json (vocab {tok.vocab_size}: {tok.base_vocab_size} + pad and mask, trained "
          f"on {FLAGS.input}); use it with --config.data.tokenizer=hf:{FLAGS.output}.")
    if FLAGS.report:
      raise app.UsageError("--report reads SentencePiece models and runs; report a byte_bpe folder through a run.")
    return
  if FLAGS.input is not None:
    tok = tokenizers.train_sentencepiece_to_file(FLAGS.input, FLAGS.output, FLAGS.vocab_size, FLAGS.model_type,
                                                 FLAGS.input_sentence_size)
    print(f"Wrote {FLAGS.output} (vocab {tok.vocab_size}, trained on {FLAGS.input}).")
    if FLAGS.report:
      FLAGS.model = FLAGS.output
      FLAGS.input = None
  elif not FLAGS.report:
    raise app.UsageError("Give --input=TEXT to train a tokenizer, or --report with --model or --workdir.")
  if not FLAGS.report:
    return
  tok, name = tokenizer_to_report()
  reports = {}
  for path in corpus.resolve(FLAGS.report_paths, "--report_paths"):
    reports[path.name] = tokenization.report(tok, corpus.read_utf8(path))
  if FLAGS.json:
    print(json.dumps({"tokenizer": name, "vocab_size": tok.vocab_size, "reports": reports}, indent=2))
    return
  print(f"Tokenizer {name}, vocab {tok.vocab_size:,}; bytes = the byte-level baseline (one token per UTF-8 byte).")
  print(tokenization.markdown(reports))


if __name__ == "__main__":
  cli.run(main)
