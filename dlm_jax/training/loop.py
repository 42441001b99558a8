"""The trainer: data, model, optimizer, jitted step, evaluation, samples, metrics, Orbax checkpoints, resume.

Resume order (big_vision): a checkpoint in WORKDIR/checkpoints (its tokenizer and iterator included) -> fresh init
(for a distillation, diffusion.objective="dcd": the teacher's weights, `start_from_teacher`; with
train.init_from="hf:PATH": a Hugging Face checkpoint's weights, model and tokenizer, training/hf_checkpoints.py).
SIGTERM/SIGINT finish the step in flight, write a checkpoint and return, and so does `train.time_limit_s` once that
many seconds have passed since the trainer started (after a final evaluation). Metrics of step k are read after step
k+1 is dispatched (nanodo).

Divergence (`Divergence`, run on each recorded step): a non-finite loss, gradient norm or parameter norm stops the run
(train.nan_policy "stop") or drops that update inside the jitted step and goes on, counting it ("skip_step";
`train.max_skipped_steps` in a row stop it); a loss above `train.spike_factor` times the median of the last
`train.spike_window` recorded losses (floored at 0.1 nats, so that a near-zero distillation loss does not make every
wobble a spike) stops it, and so does a non-finite validation NELBO. Stopping raises errors.TrainingDiverged naming the
step and the likely cause, after removing the checkpoints of the suspect states (the step whose loss gave it away used
the parameters of the step before): the last good checkpoint is the latest, and no diverged state is ever saved as the
best.
"""
from __future__ import annotations

import collections
import contextlib
import json
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dlm_jax import models
from dlm_jax.data import pipeline
from dlm_jax import objectives
from dlm_jax.errors import ConfigError, TrainingDiverged
from dlm_jax.evaluation import likelihood
from dlm_jax.models import retrieval
from dlm_jax.sampling import SamplerConfig, make_text_sampler
from dlm_jax.training import checkpoint, config_checks, hf_checkpoints, metrics as metrics_lib, optimizer, sharding
from dlm_jax.training import state as state_lib
from dlm_jax.training import step as step_lib


@contextlib.contextmanager
def stop_on_signals(flag: dict, signals=(signal.SIGTERM, signal.SIGINT)):
  """While active, `signals` set flag['stop'] instead of killing the process (restored afterwards)."""
  def handler(signum, _):
    logging.warning("Received signal %d: checkpointing after the current step, then stopping.", signum)
    flag["stop"] = True

  previous = {}
  try:
    for sig in signals:
      previous[sig] = signal.signal(sig, handler)
  except ValueError:  # not the main thread: signals cannot be caught here
    previous = {}
  try:
    yield flag
  finally:
    for sig, h in previous.items():
      signal.signal(sig, h)


def train(config: ml_collections.ConfigDict, workdir: str, stop_at_step: int | None = None) -> dict:
  """Trains to config.train.num_steps (or `stop_at_step`, then checkpoints as on SIGTERM). Returns a summary.

  One trainer per workdir (`checkpoint.workdir_lock`); the checkpoints folder must be writable. A resumed run may
  change what does not alter the model or its data (`checkpoint.config_changes`): the changes are printed."""
  config = hf_checkpoints.configure(config)  # train.init_from="hf:PATH": the checkpoint's model and tokenizer
  config_checks.check(config)  # before anything is created
  workdir = pathlib.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # a file in the way, a read-only file system, no space, no permission
    what = "is a file, not a folder" if workdir.is_file() or isinstance(e, (FileExistsError, NotADirectoryError)) \
        else f"cannot be created ({e.strerror})"
    raise checkpoint.CheckpointError(f"--workdir={workdir} {what}: choose another --workdir.") from None
  # One lock per workdir, held by the primary process of a multi-host run (its peers share the workdir).
  lock = checkpoint.workdir_lock(workdir) if sharding.is_primary() else contextlib.nullcontext()
  with lock:
    checkpoint.check_writable(workdir)
    return _train(config, workdir, stop_at_step, sharding.MeshContext.from_config(config))


def _train(config, workdir: pathlib.Path, stop_at_step, mesh: sharding.MeshContext):
  started = time.monotonic()
  tcfg = config.train
  time_limit = float(tcfg.get("time_limit_s", 0.0) or 0.0)
  nan_policy = tcfg.get("nan_policy", "stop")
  num_steps, global_batch, accum = int(tcfg.num_steps), int(tcfg.batch_size), int(tcfg.grad_accum_steps)
  mesh.check_batch(global_batch, accum)

  mngr = checkpoint.manager(workdir, max_to_keep=int(tcfg.max_to_keep))
  resumed_step, saved_meta = checkpoint.newest_readable_meta(mngr)
  saved_tokenizer = None
  if resumed_step is not None:
    refused, allowed = checkpoint.config_changes(saved_meta["config"], json.loads(config.to_json()))
    if refused:
      raise checkpoint.CheckpointError(
          f"{workdir} holds a run whose config differs in fields a resumed run cannot change: {'; '.join(refused)}. "
          "Resume with the run's own config (those fields), or use a new --workdir.")
    if allowed:
      print(f"Resuming step {resumed_step} with changed config fields: {'; '.join(allowed)}.", flush=True)
    saved_tokenizer = checkpoint.saved_tokenizer(saved_meta, config.data, workdir)
  teacher = None
  if resumed_step is None and objectives.objective_class(config).needs_teacher:
    teacher = load_teacher(config)
    saved_tokenizer = teacher.tokenizer  # the student reads the teacher's token ids
  initial_run = None
  if resumed_step is None and config.train.get("init_from_run", ""):
    if teacher is not None or config.train.get("init_from", ""):
      raise ConfigError("train.init_from_run starts from a run's weights; a distillation student starts from its "
                        "teacher and train.init_from from a Hugging Face checkpoint: set only one.")
    initial_run = checkpoint.load_for_inference(config.train.init_from_run)
    saved_tokenizer = initial_run.tokenizer  # its token ids
  streams = pipeline.load_token_streams(config.data, workdir / "data_cache", tokenizer=saved_tokenizer)
  tokenizer, vocab_size, seq_len = streams.tokenizer, streams.tokenizer.vocab_size, int(config.data.seq_len)

  objective = objectives.from_config(config, vocab_size, tokenizer)
  tx = optimizer.make_optimizer(config.optimizer, num_steps, config.model)
  train_tokens, datastore = retrieval_datastore(config, streams.train, seq_len, workdir, tokenizer.special.eos)
  if resumed_step is None and config.train.get("init_from", ""):
    if datastore is not None or teacher is not None:
      raise ConfigError("train.init_from starts from a checkpoint's weights; it takes neither retrieval slots nor a "
                        "distillation teacher.")
    graphdef, other, state = hf_checkpoints.init_train_state(config, vocab_size, tx, mesh, tokenizer.special)
    print(f"Initialized from {config.train.init_from} ({config.model.family}).", flush=True)
  else:
    graphdef, other, state = state_lib.init_on_mesh(config, vocab_size, tx, mesh, datastore, tokenizer.special)
  micro_batch = global_batch // accum
  data_shard = mesh.data_shard(micro_batch, mesh.train_batch, axis=1)
  padded = config.data.get("layout", "wrapped") in pipeline.PER_EXAMPLE_LAYOUTS
  if padded and datastore is not None:
    raise ConfigError("model.retrieval_slots cuts its datastore out of the token stream: use data.layout='wrapped'.")
  if padded:
    data_iter = pipeline.document_iterator(streams.train_docs, seq_len, global_batch, int(config.data.seed),
                                           tokenizer.special, data_shard, accum)
  else:
    data_iter = pipeline.train_iterator(train_tokens, seq_len, global_batch, int(config.data.seed), data_shard, accum)
  meta = {"config": json.loads(config.to_json()), "tokenizer": tokenizer.to_dict(), "vocab_size": vocab_size}
  if teacher is not None:
    state = start_from_teacher(state, teacher, tx)
  if initial_run is not None:
    state = start_from_run(state, initial_run, tx)
  if resumed_step is not None:  # onto this run's mesh, whatever the mesh that wrote the checkpoint
    resumed_step, state = checkpoint.restore_newest_intact(mngr, mesh.abstract(state), data_iter)
    print(f"Resumed from {mngr.directory} at step {resumed_step}.", flush=True)
  state_shardings = mesh.shardings(state)
  state = jax.device_put(state, state_shardings)
  start_step = int(state.step)

  # Every jitted function runs (and is traced) under the mesh and its rules (MeshContext.bind).
  def per_variant(build):
    """update -> mesh.bind(build(the objective that makes that update)), built once per variant of the objective
    (Objective.variant_at: e.g. extra masks for the first N updates only; one variant for most objectives)."""
    built = {}

    def for_update(update: int):
      variant = objective.variant_at(update)
      variant = objective if variant is None else variant
      if variant not in built:
        built[variant] = mesh.bind(build(variant))
      return built[variant]

    return for_update

  train_step_for = per_variant(lambda variant: step_lib.make_train_step(
      graphdef, other, variant, tx, float(tcfg.ema_decay),
      optimizer.learning_rate_schedule(config.optimizer, num_steps), state_sharding=state_shardings,
      batch_sharding=mesh.train_batch, ema_warmup=bool(tcfg.get("ema_warmup", False)),
      skip_nonfinite=nan_policy == "skip_step", trainable=models.trainable_filter(config.model)))
  eval_step = mesh.bind(likelihood.make_eval_step(graphdef, other, objective))
  # (a distillation student's loss needs its teacher: not measured there)
  estimator_batches = 0 if objective.needs_teacher else int(config.eval.get("estimator_batches", 0))
  # the training loss of the objective an update used, for its estimator's noise
  loss_step_for = per_variant(lambda variant: likelihood.make_eval_step(graphdef, other, variant, "training_loss"))
  eval_windows = pipeline.split_windows(streams, config.data, int(config.eval.num_windows),
                                        config.eval.get("windows", "first"))
  writer = metrics_lib.MetricWriter(workdir, use_tensorboard=bool(config.get("tensorboard", True)),
                                    resumed_step=resumed_step, enabled=sharding.is_primary())
  flops_per_token = models.model_config(config, vocab_size, tokenizer.special).flops_per_token(seq_len)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f"Model {config.model.name}: {num_params / 1e6:.2f}M parameters, vocab {vocab_size}, "
        f"{jax.device_count()} {jax.default_backend()} device(s) ({mesh.describe()}"
        f"{f', {jax.process_count()} processes' if jax.process_count() > 1 else ''}); "
        f"train {len(train_tokens):,} tokens{f' ({len(streams.train_docs):,} documents, padded)' if padded else ''}"
        f"{'' if datastore is None else f' (+ {datastore.size:,} in the retrieval datastore)'}, "
        f"valid {len(streams.valid):,} tokens.", flush=True)
  print(f"Corpus {streams.summary}.", flush=True)

  mesh.check_batch(min(int(config.eval.batch_size), len(eval_windows)), 1,
                   "eval.batch_size (or the number of evaluation windows)")

  def inference_params():
    return state.ema_params if state.ema_params is not None else state.params

  def evaluate(step, params, prefix):
    result = likelihood.evaluate(eval_step, params, eval_windows, tokenizer,
                                 batch_size=int(config.eval.batch_size), seed=int(config.eval.seed),
                                 time_samples=int(config.eval.time_samples),
                                 place=mesh.place_rows)
    values = {"nll_per_token": result["nats_per_token"], "bits_per_token": result["bits_per_token"],
              "bits_per_char": result["bits_per_char"]}
    if result["mc_stderr"] is not None:
      values["nll_mc_stderr"] = result["mc_stderr"]
    if estimator_batches:
      result["loss_estimator_std"] = likelihood.loss_estimator_std(
          loss_step_for(max(step - 1, 0)), params, eval_windows, batch_size=int(config.eval.batch_size),
          seed=int(config.eval.seed), batches=estimator_batches, place=mesh.place_rows,
          objective_state=state.objective_state)
      if result["loss_estimator_std"] is not None:
        values["loss_estimator_std"] = result["loss_estimator_std"]
    writer.scalars(step, prefix, values)
    return result

  def run_eval(step):
    """Evaluates the inference weights (EMA when kept: `eval/`) and, with an EMA, the raw weights too (`eval_raw/`);
    the inference weights' NELBO decides the best checkpoint."""
    result = evaluate(step, inference_params(), "eval")
    stderr = f" +- {result['mc_stderr']:.4f}" if result["mc_stderr"] is not None else ""
    line = (f"step {step} eval: {result['nats_per_token']:.4f}{stderr} nats/token ({result['bits_per_token']:.4f} "
            f"bits/token; {result['windows']} windows x {result['time_samples']} time draws)")
    if result.get("loss_estimator_std") is not None:
      line += f"; training loss estimator std {result['loss_estimator_std']:.4f}"
    if state.ema_params is not None:
      raw = evaluate(step, state.params, "eval_raw")
      line += f"; EMA weights (raw weights: {raw['nats_per_token']:.4f})"
    print(line, flush=True)
    return result["nats_per_token"]

  best_mngr = checkpoint.manager(workdir, which="best")
  best = checkpoint.best_so_far(best_mngr)
  evals_since_best = int(saved_meta.get("evals_since_best", 0)) if saved_meta else 0
  early_stop_evals = int(tcfg.get("early_stop_evals", 0))

  def track_best(step, nll) -> bool:
    """Saves the state to WORKDIR/best when `nll` is the best so far; True when the run should stop early."""
    nonlocal best, evals_since_best
    if not np.isfinite(nll):
      raise TrainingDiverged(f"The validation NELBO is non-finite ({nll}) at step {step}: the run diverged. Lower "
                             "optimizer.learning_rate or raise optimizer.warmup_steps, then resume from the last good "
                             "checkpoint.", step)
    if best is None or nll < best["nll_per_token"]:
      best, evals_since_best = {"step": step, "nll_per_token": nll}, 0
      checkpoint.save(best_mngr, step, state, None, {**meta, "best": best}, force=True)
    else:
      evals_since_best += 1
    meta["evals_since_best"] = evals_since_best
    if early_stop_evals and evals_since_best >= early_stop_evals:
      print(f"Stopping early at step {step}: {evals_since_best} evaluations without improving on "
            f"{best['nll_per_token']:.4f} (step {best['step']}; train.early_stop_evals={early_stop_evals}).",
            flush=True)
      return True
    return False

  progress = _Progress(writer, num_steps, start_step, global_batch * seq_len, flops_per_token,
                       metrics_lib.device_peak_flops(float(config.get("peak_flops", 0.0))),
                       Divergence(float(tcfg.get("spike_factor", 0.0)), int(tcfg.get("spike_window", 100)),
                                  int(tcfg.get("max_skipped_steps", 10)), global_batch))
  num_samples = int(config.sample.num_samples)
  if num_samples:
    sampler_cfg = SamplerConfig.from_config(config, tokenizer.special)
    sample_texts = mesh.bind(make_text_sampler(graphdef, other, tokenizer, sampler_cfg, objective))
    sample_len = objective.sample_length(seq_len)
    no_prompt = (np.zeros((num_samples, sample_len), np.int32), np.zeros((num_samples, sample_len), bool))
  flag = {"stop": False}
  last_eval = None
  stopped_early = timed_out = False

  def time_is_up(step) -> bool:
    """Whether train.time_limit_s has passed; several processes decide together (process 0's clock, at log steps)."""
    if not time_limit:
      return False
    if not multi_process:
      return time.monotonic() - started >= time_limit
    if step % int(tcfg.log_every):
      return False
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(time.monotonic() - started >= time_limit)))

  # Several processes stop together: JAX's preemption service (jax.distributed) catches SIGTERM on any host and has
  # every host agree on the step at which all of them checkpoint and stop (reached_preemption_sync_point); a signal
  # handled by one process alone would leave the others waiting in the next collective. One process: our handler.
  multi_process = jax.process_count() > 1
  with stop_on_signals(flag, signals=() if multi_process else (signal.SIGTERM, signal.SIGINT)), \
      discard_on_divergence(mngr, best_mngr):
    step = start_step
    while step < num_steps:
      rows = next(data_iter).reshape(accum, -1, seq_len)  # this process's rows of each micro-batch
      batch = pipeline.shard_batch(rows, mesh.train_batch, (accum, micro_batch, seq_len))
      state, step_metrics = train_step_for(step)(state, batch)
      step += 1
      progress.dispatched(step, step_metrics)  # checks and logs the previous step's metrics: no stall
      if step % int(tcfg.log_every) == 0 or step == num_steps:
        progress.flush(console=True)
      evaluated = bool(int(config.eval.every)) and (step % int(config.eval.every) == 0 or step == num_steps)
      if evaluated:
        last_eval = run_eval(step)
        stopped_early = track_best(step, last_eval)
      if not stopped_early and time_is_up(step):
        timed_out = True
        print(f"Stopping at step {step}: train.time_limit_s={time_limit:g} s have passed.", flush=True)
        if int(config.eval.every) and not evaluated:
          last_eval = run_eval(step)
          track_best(step, last_eval)
      if num_samples and int(tcfg.sample_every) and step % int(tcfg.sample_every) == 0:
        texts = sample_texts(inference_params(), jax.random.key(step), *no_prompt).texts
        writer.text(step, "samples", "\n---\n".join(texts))
        print(f"step {step} sample (all {num_samples} in {workdir / 'samples.txt'}): {texts[0][:100]!r}", flush=True)
      if multi_process and multihost_utils.reached_preemption_sync_point(step):
        print(f"Preempted: every process checkpoints at step {step} and stops.", flush=True)
        flag["stop"] = True
      stopping = flag["stop"] or stopped_early or timed_out or (stop_at_step is not None and step >= stop_at_step)
      if step % int(tcfg.checkpoint_every) == 0 or stopping:
        progress.flush()  # never checkpoint a state whose loss has not been checked
        checkpoint.save(mngr, step, state, data_iter, meta)
      if stopping:
        break
    progress.flush()
    if mngr.latest_step() != step:
      checkpoint.save(mngr, step, state, data_iter, meta, force=True)
    mngr.wait_until_finished()
    best_mngr.wait_until_finished()
  writer.close()
  mngr.close()
  best_mngr.close()
  if best is not None:
    print(f"Best validation NELBO {best['nll_per_token']:.4f} nats/token at step {best['step']} (checkpoint in "
          f"{workdir / 'best'}; load it with --checkpoint=best).", flush=True)
  return {"step": step, "eval_nll_per_token": last_eval, "history": progress.history, "stopped": step < num_steps,
          "stopped_early": stopped_early, "timed_out": timed_out, "best": best, "tokenizer": tokenizer,
          "vocab_size": vocab_size}


def retrieval_datastore(config, train_tokens, seq_len: int, workdir: pathlib.Path, eos_id: int):
  """(training stream, datastore windows or None). With model.retrieval_slots > 0 the datastore is
  model.retrieval_windows windows spread over the training stream and cut out of it (models/retrieval.py; the pieces
  left joined by `eos_id`),
  written to WORKDIR/retrieval_datastore.npy for every later load; a resumed run checks that its data still gives the
  same windows."""
  if not int(config.model.get("retrieval_slots", 0) or 0):
    return train_tokens, None
  num_windows = int(config.model.retrieval_windows)
  try:
    windows, rest = retrieval.datastore_windows(train_tokens, seq_len, num_windows, eos_id)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  saved = workdir / checkpoint.DATASTORE_FILE
  if saved.is_file() and not np.array_equal(np.load(saved), windows):
    raise ConfigError(f"{saved} differs from the datastore this run's data gives now: the training data changed "
                      "since the run started. Resume with the run's own data, or use a new --workdir.")
  if sharding.is_primary():
    checkpoint.save_datastore(workdir, windows)
  return rest, windows


def load_teacher(config) -> checkpoint.LoadedRun:
  """The distillation teacher named by `config.distill` (teacher_workdir, teacher_weights, teacher_checkpoint)."""
  distill = config.get("distill")
  if distill is None or not distill.get("teacher_workdir"):
    raise ConfigError("diffusion.objective='dcd' distills a trained teacher: set config.distill.teacher_workdir (or "
                      "run python -m launch.distill --teacher_workdir=RUN --workdir=NEW).")
  return checkpoint.load_for_inference(distill.teacher_workdir, weights=distill.get("teacher_weights", "ema"),
                                       which=distill.get("teacher_checkpoint", "latest"))


def start_from_teacher(state, teacher: checkpoint.LoadedRun, tx):
  """The student's first state: the teacher's parameters as its weights, its EMA and its first-round teacher, with a
  fresh optimizer. Raises ConfigError when the teacher's parameters do not fit the student's model."""
  params = _params_fitting(state, teacher, f"The teacher at {teacher.workdir} has another model than the student's "
                           "config.model; a distillation student keeps its teacher's architecture (launch.distill "
                           "builds it from the teacher's saved config).")
  copy = lambda: jax.tree.map(jnp.copy, params)
  print(f"Student initialized from the teacher {teacher.describe()}.", flush=True)
  return state.replace(params=params, opt_state=tx.init(params), teacher_params=copy(),
                       ema_params=None if state.ema_params is None else copy())


def _params_fitting(state, run: checkpoint.LoadedRun, mismatch: str):
  """`run`'s parameters as device arrays, when their shapes are `state`'s; else ConfigError(`mismatch`)."""
  if jax.tree.map(lambda x: x.shape, state.params) != jax.tree.map(lambda x: x.shape, run.params):
    raise ConfigError(mismatch)
  return jax.tree.map(jnp.asarray, run.params)


def start_from_run(state, run: checkpoint.LoadedRun, tx):
  """The first state of a run initialized from `run` (train.init_from_run): its parameters as the weights (and the
  EMA's start), a fresh optimizer. Raises ConfigError naming the field when the shapes differ."""
  params = _params_fitting(state, run, f"train.init_from_run={run.workdir}: its model ({run.config.model.name}, width "
                           f"{run.config.model.get('width')}, {run.config.model.get('num_layers')} layers) has other "
                           "parameters than this config.model; use the same architecture.")
  print(f"Initialized from {run.describe()}.", flush=True)
  return state.replace(params=params, opt_state=tx.init(params),
                       ema_params=None if state.ema_params is None else jax.tree.map(jnp.copy, params))


@contextlib.contextmanager
def discard_on_divergence(mngr, best_mngr):
  """On TrainingDiverged, deletes the checkpoints (latest and best) of step `error.step` on, then re-raises it naming
  the checkpoint that remains."""
  try:
    yield
  except TrainingDiverged as e:
    for manager in (mngr, best_mngr):
      manager.wait_until_finished()
      for saved in [saved for saved in manager.all_steps() if saved >= e.step]:
        manager.delete(saved)
    kept = mngr.latest_step()
    tail = (f"The checkpoints from step {e.step} on were removed; the latest is step {kept}, where a resumed run "
            "starts." if kept is not None else "No checkpoint was written before it.")
    raise TrainingDiverged(f"{e} {tail}", e.step) from None


class Divergence:
  """The divergence checks of each recorded step (module docstring): `check(step, values)` returns whether the update
  was skipped, or raises TrainingDiverged."""

  def __init__(self, spike_factor: float = 0.0, spike_window: int = 100, max_skipped: int = 10, batch_size: int = 0):
    self.spike_factor, self.max_skipped = spike_factor, max_skipped
    self.batch_size = batch_size
    self.recent = collections.deque(maxlen=spike_window)
    self.skipped = self.skipped_in_a_row = 0

  def check(self, step: int, values: dict) -> bool:
    cause = ("Lower optimizer.learning_rate, raise optimizer.warmup_steps or train.batch_size "
             f"({self.batch_size}), or check the data")
    if values.get("skipped", 0.0) > 0:
      self.skipped += 1
      self.skipped_in_a_row += 1
      if self.skipped_in_a_row >= self.max_skipped:
        raise TrainingDiverged(f"{self.skipped_in_a_row} updates in a row had a non-finite loss or gradient, the "
                               f"last at step {step} (train.max_skipped_steps={self.max_skipped}): the run "
                               f"diverged. {cause}.",
                               step - self.skipped_in_a_row)
      return True
    self.skipped_in_a_row = 0
    norms = {name: values[name] for name in ("loss", "grad_norm", "param_norm") if name in values}
    if not all(np.isfinite(v) for v in norms.values()):
      shown = ", ".join(f"{name} {value:.4g}" for name, value in norms.items())
      # a non-finite loss indicts the parameters it was computed with (step - 1's), a non-finite gradient the update
      raise TrainingDiverged(f"The training loss or gradient became non-finite at step {step} ({shown}): the run "
                             f"diverged. {cause}; or set train.nan_policy=skip_step to drop such updates.",
                             step - 1 if not np.isfinite(norms.get("loss", 0.0)) else step)
    loss = values["loss"]
    if self.spike_factor and len(self.recent) >= min(20, self.recent.maxlen):
      median = float(np.median(self.recent))
      if loss > self.spike_factor * max(median, 0.1):
        raise TrainingDiverged(f"The training loss jumped to {loss:.4g} at step {step}, {loss / max(median, 0.1):.0f} "
                               f"times its running median {median:.4g} (train.spike_factor={self.spike_factor:g}): "
                               f"the run diverged. {cause}; or raise train.spike_factor (0: no check).", step - 1)
    self.recent.append(loss)
    return False


class _Progress:
  """Reads each step's metrics one step late (after the next step is dispatched, so the device never waits on the
  host), runs the divergence checks, and writes JSONL/TensorBoard scalars and the console line."""

  def __init__(self, writer, num_steps, start_step, tokens_per_step, flops_per_token, peak,
               divergence: Divergence | None = None):
    self.writer, self.num_steps, self.start_step = writer, num_steps, start_step
    self.divergence = divergence or Divergence()
    self.tokens_per_step, self.flops_per_token, self.peak = tokens_per_step, flops_per_token, peak
    self.pending = None
    self.history = []
    self.t_start = self.t_last = time.perf_counter()
    self.steps_since_console = 0

  def dispatched(self, step, metrics):
    if self.pending is not None:
      self._record(*self.pending)
    self.pending = (step, metrics)
    self.steps_since_console += 1

  def flush(self, console: bool = False):
    if self.pending is not None:
      self._record(*self.pending, console=console)
      self.pending = None

  def _record(self, step, metrics, console=False):
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if self.divergence.check(step, values):  # a skipped update: only its count is logged
      print(f"step {step}: update skipped, non-finite loss or gradient ({self.divergence.skipped} skipped so far).",
            flush=True)
      self.writer.scalars(step, "train", {"skipped_total": float(self.divergence.skipped)})
      return
    if console:
      now = time.perf_counter()
      tokens_per_s = self.steps_since_console * self.tokens_per_step / max(now - self.t_last, 1e-9)
      mfu = metrics_lib.mfu(self.flops_per_token, tokens_per_s, self.peak)
      eta = (self.num_steps - step) * (now - self.t_start) / max(step - self.start_step, 1)
      values["tokens_per_s"] = tokens_per_s
      if mfu is not None:
        values["mfu"] = mfu
      metrics_lib.console_line(step, self.num_steps, values, tokens_per_s, mfu, eta)
      self.t_last, self.steps_since_console = now, 0
    self.writer.scalars(step, "train", values)
    self.history.append({"step": step, **values})
