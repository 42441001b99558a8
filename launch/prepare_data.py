"""Tokenize a corpus once, with every core, into sharded memory-mapped token files that training reads in place.

  python -m launch.prepare_data --input=owt/*.jsonl --tokenizer=hf:tok/gpt2 --output=data/owt_gpt2
  python -m launch.prepare_data --input=en/text8_head.txt --tokenizer=char --output=runs/data/text8_head
  python -m launch.train --config=configs/owt.py --config.data.path=data/owt_gpt2 ...

--input: files and folders (as --config.data.path reads them), globs, comma-separated; a text file is one document, a
.jsonl file one per line (its --text_field), a .parquet file one per row (needs pyarrow). --tokenizer: "char" (the
alphabet of the inputs, from a first pass), "sentencepiece" (with --tokenizer_path) or "hf:PATH" (a Hugging Face
tokenizer.json or folder). A progress line gives MB/s and the ETA. Interrupted (Ctrl-C, a killed job), the same command
resumes after the last shard written and completes the same folder an uninterrupted run writes. The folder layout and
its two reading layouts (data.layout wrapped / padded): dlm_jax/data/prepared.py, docs/data.md.
"""
import ml_collections
from absl import app, flags

from dlm_jax import cli
from dlm_jax.data import prepared, tokenizers

flags.DEFINE_string("input", None, "Text to prepare: files, folders and globs, comma-separated (relative to the "
                    "working directory or $DLM_DATA_DIR).")
flags.DEFINE_string("output", None, "The folder to write (or to finish: the same flags resume it).")
flags.DEFINE_string("tokenizer", "char", "'char', 'sentencepiece' (with --tokenizer_path) or 'hf:PATH'.")
flags.DEFINE_string("tokenizer_path", "", "The SentencePiece .model for --tokenizer=sentencepiece.")
flags.DEFINE_string("text_field", "text", "The field (.jsonl) or column (.parquet) that holds each document's text.")
flags.DEFINE_integer("shard_tokens", 1 << 27, "Tokens per shard (a shard closes after the document that reaches it; "
                     "2^27 tokens = 256 MiB at uint16).")
flags.DEFINE_integer("workers", 0, "Encoding processes; 0: one per core, 1: none (this process).")
flags.DEFINE_float("batch_mb", 1.0, "MB of text per encoding task.")
flags.DEFINE_bool("progress", True, "Print the progress line.")
FLAGS = flags.FLAGS


def build_tokenizer():
  """The tokenizer the flags name; for "char", the alphabet of every input document (one pass over them)."""
  if FLAGS.tokenizer == "char":
    docs = prepared.iter_documents(prepared.resolve_inputs(FLAGS.input), FLAGS.text_field)
    return tokenizers.CharTokenizer.from_texts(doc.text for doc in docs)
  from dlm_jax.data import pipeline  # (imports jax and grain: not at the top, which each worker process imports)
  return pipeline.build_tokenizer(ml_collections.ConfigDict(
      {"tokenizer": FLAGS.tokenizer, "tokenizer_path": FLAGS.tokenizer_path}))


def main(argv):
  del argv
  if not FLAGS.input or not FLAGS.output:
    raise app.UsageError("Give --input=TEXT (files, folders, globs) and --output=DIR.")
  if FLAGS.shard_tokens < 1 or FLAGS.workers < 0 or FLAGS.batch_mb <= 0:
    raise app.UsageError(f"--shard_tokens={FLAGS.shard_tokens} must be >= 1, --workers={FLAGS.workers} >= 0 and "
                         f"--batch_mb={FLAGS.batch_mb} > 0.")
  tokenizer = build_tokenizer()
  report = prepared.prepare(FLAGS.input, tokenizer, FLAGS.output, text_field=FLAGS.text_field,
                            shard_tokens=FLAGS.shard_tokens, workers=FLAGS.workers or None,
                            batch_bytes=int(FLAGS.batch_mb * 1e6), progress=FLAGS.progress)
  if report.resumed_from and not report.text_bytes:
    print(f"{report.output} was complete already: {report.documents:,} documents, {report.tokens:,} tokens in "
          f"{report.shards} shards.")
  else:
    resumed = f", resumed after shard {report.resumed_from}" if report.resumed_from else ""
    print(f"Prepared {report.output}: {report.documents:,} documents, {report.tokens:,} tokens in {report.shards} "
          f"shards ({tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size:,}); {report.text_bytes / 1e6:,.1f} MB of "
          f"text in {report.seconds:.1f} s = {report.mb_per_s:,.2f} MB/s{resumed}.")
  tokenizer_flag = ("" if FLAGS.tokenizer == "char" else f" --config.data.tokenizer={FLAGS.tokenizer}" +
                    (f" --config.data.tokenizer_path={FLAGS.tokenizer_path}" if FLAGS.tokenizer_path else ""))
  print(f"Train on it: python -m launch.train --config.data.path={report.output}{tokenizer_flag} "
        "[--config.data.layout=padded]")


if __name__ == "__main__":
  cli.run(main)
