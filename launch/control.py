"""Plug-and-play control, measured: a run's sampler steered towards a property by a classifier's gradient
(dlm_jax/sampling/control.py), property success against judged quality (dlm_jax/evaluation/control.py).

  python -m launch.control --workdir=RUN --classifier_dir=RUN/classifier_script --judge=AR_RUN --target=deva
                           [--scales=0,1,2,4] [--num_samples=64] [--steps=64] [--seed=0] [--show=3] [--json]

For every guidance scale (0: the unguided sampler), one batch of --num_samples unprompted samples drawn with the same
noise, and one markdown row: the fraction whose property label is --target, the judge NLL of the generated tokens
(nats/token, under the AR run), their mean unigram entropy, and the seconds the batch took after compilation. The first
rows are --num_samples real validation windows, then those of them whose label is --target (what on-target text
scores: the judge finds one script easier than the other). Train the classifier first:
python -m launch.classifier --workdir=RUN.
"""
import json

from absl import app, flags, logging

from dlm_jax import cli
from dlm_jax.errors import ConfigError
from dlm_jax.evaluation import control as control_eval
from dlm_jax.training import classifier as classifier_lib
from launch import judged

flags.DEFINE_string("workdir", None, "The diffusion run to steer (masked or embedding diffusion).", required=True)
flags.DEFINE_string("classifier_dir", None, "Its property classifier (python -m launch.classifier).", required=True)
flags.DEFINE_string("judge", None, "Causal (AR) run on the same data and tokenizer, or hf:PATH (see launch.gen_eval).",
                    required=True)
flags.DEFINE_string("target", None, "The class to steer towards (e.g. deva or latn for --property=script).",
                    required=True)
flags.DEFINE_list("scales", ["0", "1", "2", "4"], "Guidance scales gamma to sweep (0: unguided; 1: Bayes' rule).")
flags.DEFINE_integer("num_samples", 64, "Samples per scale (one batch), and real windows in the first row.")
flags.DEFINE_integer("steps", 0, "Reverse steps (0: the run's sample.steps).")
flags.DEFINE_integer("seed", 0, "Sampling seed (the same for every scale).")
cli.define_draw_precision_flag("float64", "float64 (float32 noise flatters the judge NLL and the entropy)")
cli.define_checkpoint_flags()
flags.DEFINE_integer("show", 0, "Print the first this many samples of every scale after the table.")
flags.DEFINE_bool("json", False, "Also print every row as a JSON line (without the texts).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    scales = [float(s) for s in FLAGS.scales]
  except ValueError as e:
    raise app.UsageError(f"--scales={','.join(FLAGS.scales)} must be numbers: {e}") from e
  if any(s < 0 for s in scales) or FLAGS.steps < 0:
    raise app.UsageError(f"--scales={','.join(FLAGS.scales)} and --steps={FLAGS.steps} must be >= 0.")
  try:
    run, judge, windows = judged.load_runs_and_windows(FLAGS.workdir, FLAGS.judge, weights=FLAGS.weights,
                                                       which=FLAGS.checkpoint, prompt_len=0,
                                                       num_samples=FLAGS.num_samples)
    classifier = classifier_lib.load(FLAGS.classifier_dir)
    classifier_lib.check_matches(classifier, run)
    target = classifier.prop.index(FLAGS.target)
    rows = control_eval.steering_rows(run, judge, classifier.graphdef, classifier.params, classifier.prop, target,
                                      scales, windows, FLAGS.seed, FLAGS.steps or None, FLAGS.draw_precision)
  except (ConfigError, ValueError) as e:
    raise app.UsageError(f"--workdir={FLAGS.workdir} --classifier_dir={FLAGS.classifier_dir}: {e}") from e
  accuracy = ", ".join(f"t={t} {a:.3f}" for t, a in classifier.meta["valid_accuracy"].items())
  print(f"Steering {run.describe()} towards {classifier.prop.name} = {FLAGS.target}; judge {judge.describe()}; "
        f"classifier accuracy {accuracy}.")
  print(f"| scale | {classifier.prop.name} = {FLAGS.target} | judge NLL (nats/token) | entropy (nats) | sample s |")
  print("|---|---|---|---|---|")
  for r in rows:
    seconds = "n/a" if r["sample_s"] is None else format(r["sample_s"], ".2f")
    scale = {"real": "real text", "real target": f"real text, {FLAGS.target} only"}.get(r["scale"], r["scale"])
    scale = format(scale, "g") if isinstance(scale, float) else scale
    print(f"| {scale} | {r['success']:.1%} | {r['judge_nll']:.3f} | {r['entropy']:.3f} | {seconds} |")
  for r in rows if FLAGS.show else []:
    print(f"\n--- {r['scale']}: {r['success']:.1%} {FLAGS.target} ---")
    for text in r["texts"][:FLAGS.show]:
      print(text.replace("\n", " / "))
  if FLAGS.json:
    for r in rows:
      print(json.dumps({k: v for k, v in r.items() if k != "texts"}))


if __name__ == "__main__":
  cli.run(main)
