"""`SamplerConfig`: every reverse sampler's settings in one frozen dataclass whose field names are `config.sample`'s
and launch.sample's flags. The process family (absorbing, uniform/score, gaussian) decides which fields apply; a
masked sampler's decoding components (strategies.py) check their own fields."""
from __future__ import annotations

import dataclasses
import itertools

from dlm_jax import objectives, special_tokens
from dlm_jax.diffusion import schedules
from dlm_jax.diffusion.schedules import MaskingSchedule
from dlm_jax.errors import ConfigError
from dlm_jax.sampling import primitives, strategies

# greedy/tweedie: uniform-state / SEDD (transition.py); ddim/ddpm: continuous embedding diffusion (continuous.py)
METHODS = ("confidence", "ancestral", "greedy", "tweedie", "ddim", "ddpm")
GAUSSIAN_METHODS = ("ddim", "ddpm")
PROCESSES = ("absorbing", "uniform", "gaussian")
PARAMETERIZATIONS = ("posterior", "mean", "score")  # x_0 -> reverse step: uniform.py's two, or SEDD's scores
CONFIDENCES = tuple(primitives.CONFIDENCES)
DRAW_PRECISIONS = tuple(primitives.DRAW_PRECISIONS)
REMASKING = tuple(strategies.REMASKS)
CACHES = tuple(strategies.NETWORKS)
KV_CACHES = strategies.KV_CACHES
# the objective's (process_fields)
PROCESS_FIELDS = ("process", "parameterization", "log_snr_max", "log_snr_min", "log_snr_shape", "position_skew")
STRATEGY_FIELDS = ("block_length", "threshold", "confidence_stop", "token_stop", "eos_stop", "remasking", "remask_eta",
                   "remask_t_on", "remask_t_off", "remask_alpha_on", "guidance_scale", "cache")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Every sampler's settings (strategies.py and docs/sampling.md give the masked sampler's equations); defaults are
  plain confidence decoding of the whole sequence in `steps` steps."""
  steps: int = 64
  method: str = "confidence"
  greedy: bool = False
  temperature: float = 1.0
  top_k: int = 0  # 0: no top-k filtering
  top_p: float = 1.0  # 1.0: no nucleus filtering
  # The Gumbel noise of every categorical draw: "float32" (JAX's default; stops at 15.9, cutting the far tails) or
  # "float64" (64 random bits: no event a float64 draw can make is cut; launch.gen_eval and the sampler suite's
  # default). primitives.categorical says how and why.
  draw_precision: str = "float32"
  confidence: str = "prob"  # what ranks the reveals: "prob", "margin", "entropy", "calibrated" (primitives.CONFIDENCES)
  reveal_noise: float = 0.0  # MaskGIT's choice temperature: Gumbel noise on log-confidence, annealed to 0
  strategic_weight: float = 0.0  # HRM denoiser: weight of the H-module's priority in the reveal ranking
  # A stateful denoiser's carry (the HRM denoiser's memory cell contents): False passes each reverse step's new carry
  # to the next step; True starts every step from the initial carry (the learned contents), as training does (every
  # training example starts there). No effect on a stateless denoiser.
  reset_carry: bool = False
  schedule: MaskingSchedule = MaskingSchedule("cosine")
  record_trajectory: bool = False
  block_length: int = 0  # semi-autoregressive blocks of this many generated positions; 0: one block
  threshold: float = 0.0  # Fast-dLLM: reveal every masked position with confidence > threshold (>= 1 a step); 0: off
  confidence_stop: float = 0.0  # seed 001 §9.1: reveal the rest of a block once all its confidences reach it; 0: off
  # seed 001 §9.1 per token: a masked position is revealed as soon as its confidence reaches it (besides the schedule's
  # reveals), and is then final (never remasked); 0: off
  token_stop: float = 0.0
  eos_stop: bool = False  # variable length: nothing after the first generated EOS is revealed or counted
  remasking: str = "none"  # "none", "low_confidence" (confidence method), "remdm_cap" or "remdm_loop" (ancestral)
  remask_eta: float = 0.02  # ReMDM's eta (remask probability cap / loop rate); low_confidence: fraction per step
  remask_t_on: float = 0.55  # remdm_loop: start of the loop (t runs 1 -> 0)
  remask_t_off: float = 0.05  # remdm_loop: end of the loop; low_confidence: no remasking once t' <= remask_t_off
  remask_alpha_on: float = 0.9  # remdm_loop: alpha held during the loop
  guidance_scale: float = 0.0  # classifier-free guidance w: (1 + w) cond - w uncond (fixed positions masked)
  cache: str = "none"  # "unchanged": logits reused while no token changes (MDLM); "dual"/"prefix": Fast-dLLM's
  # The model's forward process and output (set from the run's diffusion config by from_config): "absorbing" with an
  # x_0 denoiser is this module's sampler; "uniform", or parameterization "score" (SEDD), run transition.py's.
  process: str = "absorbing"
  parameterization: str = "mean"  # (ignored by the masked sampler)
  log_snr_max: float = 5.0  # process "gaussian": the run's log-SNR schedule (diffusion/gaussian.py)
  log_snr_min: float = -10.0
  log_snr_shape: str = "linear"
  position_skew: float = 0.0  # process "gaussian": each position's own clock (gaussian.LogSNRSchedule)
  # The tokenizer's special ids (mask, pad, eos, ...; special_tokens.SpecialIds): set by from_config from the run's
  # tokenizer; the default is our character and SentencePiece tokenizers' 0..4.
  special: special_tokens.SpecialIds = special_tokens.DEFAULT

  @classmethod
  def from_config(cls, config, special: special_tokens.SpecialIds, **overrides) -> "SamplerConfig":
    """The sampler settings of a run's ml_collections config (`config.sample`, less `num_samples`) for a tokenizer
    with the special ids `special` (`tokenizer.special`; a LoadedRun's `sampler_config` passes its own), with
    `overrides`. The reveal schedule is `sample.reveal_schedule` or, when empty, the training schedule
    `diffusion.schedule` (with its exponent and eps)."""
    fields = dict(config.sample, special=special)
    fields.update(process_fields(config))
    fields.update(overrides)
    fields.pop("num_samples", None)
    name = fields.pop("reveal_schedule", "") or config.diffusion.schedule
    reveal = dataclasses.replace(schedules.from_config(config.diffusion), name=name)
    return cls(schedule=reveal, **fields)

  @property
  def moves_every_position(self) -> bool:
    """Whether this is transition.py's sampler (uniform process or SEDD scores) rather than the masked one."""
    return self.process == "uniform" or self.parameterization == "score"

  @property
  def family(self) -> str:
    """Which sampler runs this config's process (the `sampler.SAMPLERS` entry, unless the run's objective names its
    own): "gaussian" (continuous.py), "transition" (uniform-state or SEDD scores, transition.py) or "absorbing" (the
    masked sampler, masked.py)."""
    if self.process == "gaussian":
      return "gaussian"
    return "transition" if self.moves_every_position else "absorbing"

  def __post_init__(self):
    if self.method not in METHODS:
      raise ConfigError(f"sampler method must be one of {METHODS}, got {self.method!r}.")
    if self.process not in PROCESSES or self.parameterization not in PARAMETERIZATIONS:
      raise ConfigError(f"sampler process must be one of {PROCESSES} and parameterization one of "
                        f"{PARAMETERIZATIONS}, got {self.process!r} and {self.parameterization!r}.")
    if self.process == "gaussian" or self.method in GAUSSIAN_METHODS:
      if self.process != "gaussian" or self.method not in GAUSSIAN_METHODS:
        raise ConfigError(f"Continuous embedding diffusion (diffusion.objective='embedding') samples with method "
                          f"'ddim' or 'ddpm', and only it does; got method {self.method!r} for a {self.process} "
                          "model (sample.method / --method).")
      masked_only = self.changed(STRATEGY_FIELDS + ("reveal_noise", "strategic_weight", "top_k", "top_p"))
      if masked_only:
        raise ConfigError(f"The sampler options {sorted(masked_only)} are not DDIM/DDPM options; a continuous "
                          "embedding model's sampler takes steps, greedy and temperature. Reset them.")
    elif self.moves_every_position:
      allowed = ("tweedie",) if self.parameterization == "score" else ("ancestral", "greedy")
      if self.method not in allowed:
        raise ConfigError(f"A {'SEDD score' if self.parameterization == 'score' else 'uniform-state'} model samples "
                          f"with method {' or '.join(map(repr, allowed))} (sample.method / --method), not "
                          f"{self.method!r}.")
      masked_only = self.changed(STRATEGY_FIELDS + ("reveal_noise", "strategic_weight"))
      if masked_only:
        raise ConfigError(f"The sampler options {sorted(masked_only)} are masked-diffusion decoding strategies; a "
                          f"{self.process} {self.parameterization} model's sampler moves every position at every "
                          "step and takes steps, greedy, temperature, top_k and top_p. Reset them.")
    elif self.method in ("greedy", "tweedie"):
      raise ConfigError(f"sampler method {self.method!r} is for uniform-state or SEDD models; a masked x_0 model "
                        "samples with 'confidence' or 'ancestral'.")
    if self.steps < 1:
      raise ConfigError(f"sampler steps must be >= 1, got {self.steps}.")
    if self.draw_precision not in primitives.DRAW_PRECISIONS:
      raise ConfigError(f"sampler draw_precision must be one of {tuple(primitives.DRAW_PRECISIONS)}, got "
                        f"{self.draw_precision!r} (sample.draw_precision / --draw_precision).")
    if self.temperature <= 0 and not self.greedy:
      raise ConfigError("sampler temperature must be > 0 (use greedy=True for argmax decoding).")
    if self.block_length < 0:
      raise ConfigError(f"sampler block_length must be >= 0 (0: one block), got {self.block_length}.")
    if self.guidance_scale < 0:
      raise ConfigError(f"sampler guidance_scale must be >= 0 (0: no guidance), got {self.guidance_scale}.")
    strategies.check(self)  # each decoding component's own fields, then the rules that span them

  def changed(self, names) -> list[str]:
    """The fields among `names` whose value is not their default."""
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    return [name for name in names if getattr(self, name) != defaults[name]]

  @classmethod
  def strategy_defaults(cls) -> dict:
    """The decoding-strategy fields (all off by default) with their defaults."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name in STRATEGY_FIELDS}

  @classmethod
  def config_section(cls) -> dict:
    """config.sample with every field's default: `num_samples`, the fields a user sets (each declared once, above,
    with its comment) and `reveal_schedule`; not the fields the run decides (the schedule object, the process fields
    its objective gives) nor `record_trajectory` (a launcher's choice)."""
    decided = {"schedule", "record_trajectory", "special", *PROCESS_FIELDS}
    return {"num_samples": 2,  # samples written to the log every train.sample_every steps
            **{f.name: f.default for f in dataclasses.fields(cls) if f.name not in decided},
            "reveal_schedule": ""}  # the reveal schedule's name; empty: follow diffusion.schedule

  def max_steps(self, length: int) -> int:
    """The loop's bound for sequences of `length` positions: `steps`, or `length` with threshold decoding."""
    return length if self.threshold else self.steps


def process_fields(config) -> dict:
  """The SamplerConfig fields that a run's objective decides (`objectives.objective_class(config)`): its forward
  process (masked objectives and the AR arm, whose own decoder ignores them: "absorbing"), the parameterization of
  the reverse step ("score" for a score model, else diffusion.parameterization) and the log-SNR range."""
  objective = objectives.objective_class(config)
  process = objective.process_of(config.diffusion)
  defaults = objectives.config_fields()
  read = lambda name: config.diffusion.get(name, defaults[name])
  return {"process": process if process in ("uniform", "gaussian") else "absorbing",
          "parameterization": "score" if objective.outputs == "score" else read("parameterization"),
          "log_snr_max": float(read("log_snr_max")), "log_snr_min": float(read("log_snr_min")),
          "log_snr_shape": str(read("log_snr_shape")), "position_skew": float(read("position_skew"))}


def component_combinations() -> list[tuple[str, str, str, dict, str]]:
  """Every (reveal policy, remask, step network) of the masked sampler's registries (strategies.REVEALS, REMASKS,
  NETWORKS) as (reveal, remask, network, fields, refusal): `fields` merges the three components' `selected_by`
  SamplerConfig fields, `refusal` is "" when SamplerConfig(**fields) builds and the ConfigError's message when the
  rules refuse the combination (docs/sampling.md prints this table; tests/test_sampler.py runs every legal row)."""
  rows = []
  for reveal, remask, network in itertools.product(strategies.REVEALS.values(), strategies.REMASKS.values(),
                                                   strategies.NETWORKS.values()):
    fields = {**reveal.selected_by, **remask.selected_by, **network.selected_by}
    try:
      SamplerConfig(**fields)
      refusal = ""
    except ConfigError as e:
      refusal = str(e)
    rows.append((reveal.name, remask.name, network.name, fields, refusal))
  return rows
