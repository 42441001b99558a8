"""Training the guide of plug-and-play control: a property classifier p_phi(c | x_t, t) on a trained run's noisy
states (models/classifier.py; sampling/control.py steers with it; `python -m launch.classifier` runs this).

Data: windows of the run's training text at random offsets (as many as `max_windows`), each labelled by the
property's exact rule (evaluation/control.PROPERTIES) on its decoded text; unlabelled windows are dropped. The
classifier is trained by cross-entropy on the windows corrupted as the run's sampler will present them, t ~ U(0, 1)
per example:

* a masked run ("tokens" input): each position masked with probability t (every mask fraction is equally likely; the
  classifier sees the mask count, not t, so the run's masking schedule does not matter);
* an embedding-diffusion run ("embeddings" input): z_t = alpha_t e(x) + sigma_t eps in the run's own normalized
  embedding table and log-SNR schedule (diffusion/gaussian.forward_sample), with t as an input.

The clean-to-noisy accuracy curve on held-out windows of the run's validation text (at t = 0, 0.5, 0.8, 0.95) is
saved with the classifier: a guide is only as good as its accuracy at the noise levels where the sampler asks it.

Saved as an Orbax checkpoint (atomic): the parameters and a JSON meta with the classifier's shape, the property and
its classes, the run it was trained on (workdir, step, weights, tokenizer fingerprint) and the accuracies.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from dlm_jax.data import pipeline, tokenizers
from dlm_jax.diffusion import gaussian
from dlm_jax.errors import ConfigError
from dlm_jax.evaluation import control as control_eval
from dlm_jax.models.classifier import ClassifierConfig, PropertyClassifier
from dlm_jax.sampling import continuous

EVAL_TIMES = (0.0, 0.5, 0.8, 0.95)


@dataclasses.dataclass
class LoadedClassifier:
  """A trained classifier split for jitted use (`nnx.merge(graphdef, params)`), its property and its meta."""
  graphdef: object
  params: object
  config: ClassifierConfig
  prop: control_eval.Property
  meta: dict


def input_kind(run) -> str:
  """"embeddings" for an embedding-diffusion run, "tokens" for a masked one; ConfigError for the others."""
  family = run.sampler_config().family
  if family == "gaussian":
    return "embeddings"
  if family == "absorbing" and not run.objective.is_autoregressive:
    return "tokens"
  raise ConfigError(f"A property classifier guides the masked and the embedding-diffusion samplers; {run.workdir} "
                    f"samples with the {run.objective.sampler or family!r} sampler.")


def labelled_windows(tokens: np.ndarray, seq_len: int, tokenizer, prop, max_windows: int, seed: int):
  """(windows_NxL, labels_N): up to `max_windows` windows at seeded random offsets of `tokens`, less the unlabelled."""
  tokens = np.asarray(tokens)
  if len(tokens) < seq_len:
    raise ConfigError(f"The text holds {len(tokens)} tokens, fewer than one window of {seq_len}.")
  offsets = np.random.default_rng(seed).integers(0, len(tokens) - seq_len + 1, size=max_windows)
  windows = np.stack([tokens[o:o + seq_len] for o in offsets]).astype(np.int32)
  labels = prop.labels(tokenizer.decode(w) for w in windows)
  return windows[labels >= 0], labels[labels >= 0]


def noisy_inputs(kind: str, rng, tokens_BxL, t_B, *, vocab_size: int, mask_id: int, table_VxD=None, schedule=None):
  """The classifier's input at time t_B (module docstring): one_hot(x_t) [B, L, V] or z_t [B, L, D]."""
  if kind == "tokens":
    masked_BxL = jax.random.uniform(rng, tokens_BxL.shape) < t_B[:, None]
    return jax.nn.one_hot(jnp.where(masked_BxL, mask_id, tokens_BxL), vocab_size, dtype=jnp.float32)
  return gaussian.forward_sample(rng, table_VxD[tokens_BxL], t_B, schedule)[0]


def train(run, prop_name: str = "script", *, steps: int = 2000, batch_size: int = 64, learning_rate: float = 1e-3,
          width: int = 64, num_layers: int = 2, num_heads: int = 4, max_windows: int = 16384, seed: int = 0,
          log=print) -> LoadedClassifier:
  """A classifier of property `prop_name` trained on `run`'s noisy states (module docstring), with its meta."""
  prop = control_eval.PROPERTIES[prop_name]
  kind = input_kind(run)
  seq_len = run.objective.sample_length(int(run.config.data.seq_len))
  streams = pipeline.load_token_streams(run.config.data, pathlib.Path(run.workdir) / "data_cache", run.tokenizer)
  if not isinstance(streams.train, np.ndarray):
    raise ConfigError(f"A property classifier reads a run's text as one token stream; {run.workdir}'s data.layout "
                      f"{run.config.data.get('layout')!r} holds documents.")
  train_x, train_y = labelled_windows(streams.train, seq_len, run.tokenizer, prop, max_windows, seed)
  valid_x, valid_y = labelled_windows(streams.valid, seq_len, run.tokenizer, prop, 1024, seed + 1)
  for name, labels in (("training", train_y), ("validation", valid_y)):
    if len(np.unique(labels)) < 2:
      raise ConfigError(f"The run's {name} windows show {len(np.unique(labels))} class(es) of property {prop.name!r} "
                        f"({prop.classes}); a classifier needs text of at least two.")
  shares = {c: round(float(np.mean(train_y == i)), 3) for i, c in enumerate(prop.classes)}
  log(f"{len(train_y):,} labelled training windows of {seq_len} tokens ({shares}), {len(valid_y):,} validation.")

  vocab = int(run.tokenizer.vocab_size)
  table = run.model().diffusion_table() if kind == "embeddings" else None
  schedule = continuous.schedule_of(run.sampler_config()) if kind == "embeddings" else None
  cfg = ClassifierConfig(num_classes=len(prop.classes), input_kind=kind,
                         input_dim=vocab if kind == "tokens" else int(table.shape[1]), max_len=seq_len, width=width,
                         num_layers=num_layers, num_heads=num_heads, mlp_dim=round(8 * width / 3))
  graphdef, params = nnx.split(PropertyClassifier(cfg, rngs=nnx.Rngs(seed)))
  noisy = lambda rng, x, t: noisy_inputs(kind, rng, x, t, vocab_size=vocab, mask_id=run.tokenizer.special.mask,
                                         table_VxD=table, schedule=schedule)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(steps // 20, 1), steps), weight_decay=0.01))
  opt_state = tx.init(params)

  def loss_fn(params, rng, x_BxL, y_B):
    t_rng, n_rng = jax.random.split(rng)
    t_B = jax.random.uniform(t_rng, (x_BxL.shape[0],))
    logits_BxC = nnx.merge(graphdef, params)(noisy(n_rng, x_BxL, t_B), t_B)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_B))

  @jax.jit
  def step(params, opt_state, rng, x_BxL, y_B):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng, x_BxL, y_B)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def correct(params, rng, x_BxL, y_B, t):
    t_B = jnp.full((x_BxL.shape[0],), t, jnp.float32)
    logits_BxC = nnx.merge(graphdef, params)(noisy(rng, x_BxL, t_B), t_B)
    return jnp.sum(jnp.argmax(logits_BxC, axis=-1) == y_B)

  def accuracy(params):
    out = {}
    for t in EVAL_TIMES:
      hits = sum(int(correct(params, jax.random.key(i), jnp.asarray(valid_x[i:i + 256]),
                             jnp.asarray(valid_y[i:i + 256]), t)) for i in range(0, len(valid_y), 256))
      out[f"{t:g}"] = hits / len(valid_y)
    return out

  order = np.random.default_rng(seed + 2)
  rng, start = jax.random.key(seed), time.perf_counter()
  for i in range(steps):
    rows = order.integers(0, len(train_y), size=batch_size)
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(rng, i), jnp.asarray(train_x[rows]),
                                   jnp.asarray(train_y[rows]))
    if (i + 1) % max(steps // 10, 1) == 0 or i + 1 == steps:
      log(f"step {i + 1}/{steps} loss {float(loss):.4f} ({time.perf_counter() - start:.0f} s)")
  acc = accuracy(params)
  log("validation accuracy by noise level t: " + ", ".join(f"t={t} {a:.3f}" for t, a in acc.items()))
  meta = {"property": prop.name, "classes": list(prop.classes), "classifier": dataclasses.asdict(cfg),
          "run": {"workdir": str(run.workdir), "step": int(run.step), "weights": run.weights,
                  "tokenizer": tokenizers.fingerprint(run.tokenizer)},
          "train": {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                    "windows": int(len(train_y)), "class_shares": shares, "seconds": time.perf_counter() - start},
          "valid_accuracy": acc}
  return LoadedClassifier(graphdef, params, cfg, prop, meta)


def _manager(directory, create: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=create)
  return ocp.CheckpointManager(pathlib.Path(directory).resolve(), options=options, item_names=("params", "meta"))


def save(directory, classifier: LoadedClassifier):
  """Writes `classifier` to `directory` (an Orbax checkpoint: written whole or not at all)."""
  mngr = _manager(directory, create=True)
  mngr.save(int(classifier.meta["train"]["steps"]), args=ocp.args.Composite(
      params=ocp.args.StandardSave(classifier.params), meta=ocp.args.JsonSave(classifier.meta)), force=True)
  mngr.wait_until_finished()
  mngr.close()


def load(directory, flag: str = "--classifier_dir") -> LoadedClassifier:
  """The classifier saved in `directory`; ValueError naming `flag` when there is none."""
  if not pathlib.Path(directory).is_dir():
    raise ValueError(f"{flag}={directory}: no such folder. Train a classifier first: python -m launch.classifier "
                     f"--workdir=RUN --classifier_dir={directory}")
  mngr = _manager(directory, create=False)
  step = mngr.latest_step()
  if step is None:
    raise ValueError(f"{flag}={directory} holds no classifier checkpoint. Train one: python -m launch.classifier "
                     f"--workdir=RUN --classifier_dir={directory}")
  meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  cfg = ClassifierConfig(**meta["classifier"])
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: PropertyClassifier(cfg, rngs=nnx.Rngs(0))))
  params = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))).params
  mngr.close()
  return LoadedClassifier(graphdef, params, cfg, control_eval.PROPERTIES[meta["property"]], meta)


def check_matches(classifier: LoadedClassifier, run, flag: str = "--classifier_dir"):
  """Raises ValueError unless `classifier` can guide `run`'s sampler: the same input kind and tokenizer, and for an
  embedding run the very run and weights it was trained on (its latent space is that run's embedding table)."""
  kind, trained_on = input_kind(run), classifier.meta["run"]
  if classifier.config.input_kind != kind:
    raise ValueError(f"{flag}: the classifier reads {classifier.config.input_kind}, but {run.workdir} is guided "
                     f"through its {kind}. Train one on this run: python -m launch.classifier --workdir={run.workdir}")
  if trained_on["tokenizer"] != tokenizers.fingerprint(run.tokenizer):
    raise ValueError(f"{flag}: the classifier was trained with another tokenizer than {run.workdir}'s (it was trained "
                     f"on {trained_on['workdir']}).")
  same_run = (pathlib.Path(trained_on["workdir"]).resolve() == pathlib.Path(run.workdir).resolve()
              and trained_on["step"] == run.step and trained_on["weights"] == run.weights)
  if kind == "embeddings" and not same_run:
    raise ValueError(f"{flag}: this classifier reads the latents of {trained_on['workdir']} (step "
                     f"{trained_on['step']}, {trained_on['weights']} weights); {run.workdir} step {run.step} "
                     f"({run.weights} weights) has its own embedding space. Train one on it: python -m "
                     f"launch.classifier --workdir={run.workdir}")
