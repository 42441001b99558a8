"""What launch.gen_eval and launch.sampler_suite share: a diffusion run, its AR judge and the prompt windows."""
from configs import default
from dlm_jax.data import pipeline
from dlm_jax.evaluation import generation
from dlm_jax.sampling import hybrid
from dlm_jax.training import checkpoint, hf_checkpoints


def load_judge(judge: str, run, weights: str = "ema", which: str = "latest"):
  """The judge of `run`'s samples: a causal run (its `:ar` arm: same tokenizer, a context at least as long), or
  "hf:PATH", a Hugging Face causal LM (GPT-2, as MDLM/Duo/ReMDM judge) loaded as a causal dlm_jax model in float32,
  which scores the retokenized text (evaluation/generation.retokenizing_judge). Raises ValueError naming --judge."""
  if judge.startswith("hf:"):
    if run.objective.is_autoregressive:
      raise ValueError("--workdir is a causal (AR) run; --judge checks diffusion runs.")
    return hf_checkpoints.load_run(judge, default.base_config(), objective="autoregressive", flag="--judge",
                                   dtype="float32")
  loaded = checkpoint.load_for_inference(judge, weights=weights, which=which)
  hybrid.check_causal_run(run, loaded)
  return loaded


def load_runs_and_windows(workdir: str, judge_dir: str, *, weights: str, which: str, prompt_len: int,
                          num_samples: int, path: str = "", prompt_scripts: str = "any", continue_chunk: int = 0,
                          continue_windows: int = 0):
  """(run, judge, windows_WxL): both runs loaded for inference, the judge checked against the run (`load_judge`), and
  `num_samples` windows of the run's validation split (or `path`) whose first `prompt_len` tokens are the prompts.
  With `continue_windows` = K > 0 (text to continue past the context, C = `continue_chunk`): the prompts are context - C
  tokens (`prompt_len` is not used) and each window holds them and the K C real tokens after them. Raises ValueError
  naming the flag at fault."""
  run = checkpoint.load_for_inference(workdir, weights=weights, which=which)
  judge = load_judge(judge_dir, run, weights, which)
  seq_len = window_len = int(run.config.data.seq_len)
  if continue_windows:
    context = run.objective.sample_length(seq_len)
    if not 1 <= continue_chunk < context:
      raise ValueError(f"--continue_chunk={continue_chunk} must be between 1 and {context - 1} (the run's context is "
                       f"{context} tokens).")
    prompt_len = context - continue_chunk
    window_len = prompt_len + continue_windows * continue_chunk
  elif not 0 <= prompt_len < seq_len:
    raise ValueError(f"--prompt_len={prompt_len} must be in [0, {seq_len}) (data.seq_len of the run; 0: unprompted "
                     "samples).")
  stream = pipeline.validation_stream(run.config.data, f"{workdir}/data_cache", run.tokenizer, path)
  if len(stream) < window_len:
    raise ValueError(f"The validation text holds {len(stream)} tokens, fewer than one window of {window_len}: use "
                     "--path with more text" + (", or fewer --continue_windows." if continue_windows else "."))
  windows = generation.select_windows(stream, window_len, num_samples, prompt_len, run.tokenizer, prompt_scripts)
  return run, judge, windows
