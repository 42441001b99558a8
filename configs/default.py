"""The embedded default: a small character-level masked-diffusion LM on the CPython documentation topics.

The corpus is the standard-library module `pydoc_data.topics` (~465k characters, in every Python installation), so
this runs anywhere with no download and no ../shared/data.

Command:   python -m launch.train                       (same as --config=configs/default.py --workdir=runs/default)
Then:      python -m launch.sample --workdir=runs/default --prompt="The " --length=48
Hardware:  CPU (2 cores): about 3 minutes for 900 steps of 32 x 64 characters, compilation and evaluation included
           (183 s on a fresh clone with an empty compilation cache, 170 s with a warm one; BENCHMARKS.md).
Expected:  validation NELBO about 3.5 bits/char at step 900 (README results), trained on the clipped times
           t ~ U[0.3, 0.8] (issue #31; `base_config` is the same on t ~ U[0, 1], about 3.6). The AR control arm
           (--config=configs/default.py:ar) gets much lower in the same time: diffusion LMs learn more slowly per
           step, the price of any-order generation.

Every other config starts from `base_config` (this one without the clipped times) and overrides fields; every field
is documented here, the model fields in their config dataclasses (see model_config).
"""
import ml_collections

from dlm_jax import models, objectives, sampling
from dlm_jax.models import partitioning


ARMS = ("diffusion", "ar")


def get_config(arm: str = "diffusion") -> ml_collections.ConfigDict:
  """The embedded default run: `base_config` with the masked ELBO trained on the clipped time window (issue #31,
  CLIPPED_TIME_WINDOW below) and a warm-up of DEFAULT_WARMUP_STEPS; arm "ar" (`--config=configs/default.py:ar`) is
  its AR control arm, the same data, backbone and optimizer, causal with the next-token loss (`causal_arm`)."""
  if arm not in ARMS:
    raise ValueError(f"configs/default.py takes one of {ARMS}, got {arm!r}.")
  c = causal_arm(base_config()) if arm == "ar" else clip_training_times(base_config())
  c.optimizer.warmup_steps = DEFAULT_WARMUP_STEPS
  return c


# The embedded default's learning-rate warm-up (issue #31's third table, BENCHMARKS.md "Diffusion sample efficiency"):
# at small batches the diffusion loss wants a longer warm-up than base_config's 50 updates. 150 of the 900 gave a
# validation NELBO of 2.339 / 2.369 / 2.314 against 2.418 / 2.374 / 2.372 in three seeds; the AR arm 1.511 against
# 1.522 (shakespeare_char_small's masked arms gain 0.07-0.13 from the same change).
DEFAULT_WARMUP_STEPS = 150


def base_config() -> ml_collections.ConfigDict:
  """The config every other config starts from: the embedded default with the masked ELBO on t ~ U[0, 1] (MDLM's and
  MD4's training times; the papers' protocols keep them, and a config that wants the window clips it itself)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tensorboard = True
  c.peak_flops = 0.0  # FLOP/s for MFU; 0 = the measured ceiling of a known GPU (H100/H200), else MFU is not shown

  c.data = ml_collections.ConfigDict()
  c.data.path = "embedded:pydoc_topics"  # or files/folders (comma-separated), relative to cwd or $DLM_DATA_DIR
  c.data.valid_path = ""  # empty: the last valid_fraction of the token stream is the validation split
  c.data.valid_fraction = 0.1
  # > 0: the last test_fraction of the corpus is a test split (before it, valid_fraction validates): never trained or
  # validated on, scored by `launch.evaluate --split=test` (text8's 90/5/5)
  c.data.test_fraction = 0.0
  # "char" (alphabet built from the corpus), "sentencepiece" (data.tokenizer_path) or "hf:PATH" (a Hugging Face
  # tokenizer.json or tokenizer folder, e.g. GPT-2's or bert-base-uncased's: data/tokenizers.py)
  c.data.tokenizer = "char"
  c.data.tokenizer_path = ""  # .model file from `python -m launch.tokenizer` when tokenizer="sentencepiece"
  c.data.seq_len = 64  # tokens per training and evaluation window (the model's context)
  # "wrapped": documents joined by EOS, random windows of seq_len; "padded": one document per window, then EOS and
  # padding, which is never corrupted nor scored (MDLM's two layouts; padded needs a prepared folder as data.path)
  # "chat": data.path is JSON lines of conversations, one per window, the prompt given and the response the target
  # (data/chat.py; LLaDA's SFT)
  c.data.layout = "wrapped"
  c.data.chat_template = "plain"  # "chat" layout: "plain" (User:/Assistant: lines) or "tokenizer" (its Jinja template)
  c.data.chat_fill = "eos"  # "chat" layout: after the response's EOS, "eos" (LLaDA: scored) or "pad" (never scored)
  # "puzzle": data.path is a set of `python -m launch.puzzles` (Sudoku, mazes): the given cells fixed, the blanks the
  # target (data/puzzles.py); "grid" windows hold the cells, "prompted" the puzzle then the solution (the AR arm)
  c.data.puzzle_layout = "grid"
  c.data.augment = 1  # "puzzle" layout: > 1 serves each puzzle under that many seeded validity-preserving transforms
  c.data.seed = 0  # shuffling of the training crops

  # The training objective (dlm_jax/objectives/; docs/objectives.md): diffusion.objective names an OBJECTIVES class
  # ("elbo": MD4/MDLM NELBO, "masked_mean", "autoregressive", "uniform", "duo", "sedd", "dcd", "embedding"), the
  # masking schedule and the class's own fields, each declared once with its default and comment in its class
  # (objectives.SECTION_FIELDS for the schedule and the script-aware corruption).
  c.diffusion = objectives.config_section()
  # The teacher of a "dcd" run (python -m launch.distill sets these): its workdir, weights and checkpoint.
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdir = ""
  c.distill.teacher_weights = "ema"  # "ema" (when the teacher kept them) or "raw"
  c.distill.teacher_checkpoint = "latest"  # "latest" or "best"

  c.model = model_config("transformer")
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.width = 128
  c.model.mlp_dim = 352

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 2e-3  # the peak: linear warmup over warmup_steps, then cosine to min_lr_ratio x it
  c.optimizer.warmup_steps = 50  # the embedded default itself (get_config) uses DEFAULT_WARMUP_STEPS
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0
  # EcoHybrid's slow memory slots (model.slow_slots > 0) train at this multiple of the learning rate (seed 001 §9.3)
  c.optimizer.slow_slots_lr_scale = 0.1

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 900  # optimizer updates (the learning-rate schedule's length)
  c.train.batch_size = 32  # global batch (sequences per optimizer step)
  c.train.grad_accum_steps = 1
  c.train.ema_decay = 0.0  # 0 disables the EMA of parameters
  # "hf:PATH": start from a Hugging Face checkpoint folder (BERT, ModernBERT, GPT-2, LLaMA, Qwen2/Dream): its weights,
  # its architecture as config.model (name "pretrained") and its tokenizer (training/hf_checkpoints.py).
  c.train.init_from = ""
  # A dlm_jax run's folder: start from its weights (EMA when it kept them) and its tokenizer, a fresh optimizer, the
  # architecture this config's (the parameter shapes must match; `causal` and `shift_logits` may differ). Issue #31's
  # AR-to-diffusion conversion: a diffusion arm from its `:ar` run, with model.shift_logits=True (Dream).
  c.train.init_from_run = ""
  # LoRA on an imported checkpoint (> 0: rank r; only the adapters train; launch.export merges them): adapters on the
  # projections named in lora_targets, a comma list of "qkv", "out" and "mlp" (models/pretrained.py)
  c.train.lora_rank = 0
  c.train.lora_targets = "qkv,out"
  c.train.ema_warmup = True  # decay_t = min(ema_decay, (1 + t) / (10 + t)); False: ema_decay from the first step
  c.train.log_every = 50
  c.train.checkpoint_every = 300
  c.train.max_to_keep = 2
  # > 0: stop after this many evaluations in a row without a better validation NELBO than the best so far (which is
  # always kept in WORKDIR/best); 0: run to num_steps
  c.train.early_stop_evals = 0
  # > 0: wall-clock seconds from the trainer's start after which the run stops as on SIGTERM, with a final evaluation
  # when the stopping step was not just evaluated (a batch-job limit; the GPU suite's fixed-time runs). The
  # learning-rate schedule stays that of num_steps.
  c.train.time_limit_s = 0.0
  # Divergence (dlm_jax/training/loop.py): a non-finite loss or gradient stops the run ("stop") or drops that update
  # and goes on ("skip_step"; max_skipped_steps in a row stop it); a loss above spike_factor x the median of the last
  # spike_window recorded losses stops it (0: no spike check). Stopping removes the suspect checkpoints.
  c.train.nan_policy = "stop"
  c.train.max_skipped_steps = 10
  c.train.spike_factor = 10.0
  c.train.spike_window = 100
  c.train.sample_every = 300

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 300  # steps between validation NELBO evaluations (and best checkpoints); 0: none
  c.eval.num_windows = 128  # fixed non-overlapping validation windows
  c.eval.windows = "first"  # "first": the first num_windows of the valid stream; "spread": evenly over all of it
  c.eval.batch_size = 32
  c.eval.time_samples = 2  # antithetic time draws per window
  # False: score tokens 2..L of a window given the first (what the AR arm's exact NLL scores); True: all L tokens, the
  # first with no context (MD4/MDLM's text8 and OpenWebText protocol; diffusion objectives only)
  c.eval.score_all_tokens = False
  c.eval.seed = 1234
  # The training loss estimator's noise, logged with every evaluation (eval/loss_estimator_std; issue #31): the training
  # objective is drawn twice (independent times and masks) on each of the first estimator_batches evaluation batches,
  # std = sqrt(mean (a - b)^2 / 2), nats/token for a batch of eval.batch_size windows. 0: not measured.
  c.eval.estimator_batches = 4

  # The sampler (dlm_jax/sampling/config.py, docs/sampling.md): every field declared once, with its default and comment,
  # in SamplerConfig. The embedded default ranks reveals with MaskGIT's choice temperature (Gumbel noise on the
  # log-confidence, annealed to 0): without it the small default model fills samples with spaces, its most
  # predictable character.
  c.sample = ml_collections.ConfigDict(sampling.SamplerConfig.config_section())
  c.sample.reveal_noise = 4.5

  # The device mesh (dlm_jax/training/sharding.py): data x fsdp x tensor = the device count (-1: the rest). fsdp splits
  # every parameter and optimizer moment (ZeRO-3), tensor the MLP hidden and attention-head dimensions (Megatron).
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # True: the train state is initialized inside a jit with its shardings (no device holds the whole state); False: on
  # one device, then split (no extra compilation; the whole state must fit on one device)
  c.mesh.sharded_init = True
  # Logical axis name -> mesh axes it is split over ("data,fsdp"; "" = replicated); models/partitioning.py names them.
  c.mesh.rules = ml_collections.ConfigDict(
      {name: ",".join((axes,) if isinstance(axes, str) else axes or ()) for name, axes in partitioning.DEFAULT_RULES})

  c.bench = bench_config(vocab_size=0, sample_batch=16, sample_new_tokens=64, sample_steps=32)
  return c


# Issue #31: the masked ELBO trained on t ~ U[0.3, 0.8] (BD3-LM's clipped window; MaskedELBO.time_low/time_high)
# learned faster on nanoGPT's CPU recipe (validation NELBO -0.16 nats/char at 2,000 updates, two seeds; windows
# [0.2, 0.8] and [0.3, 0.9] within 0.01 of it), on shakespeare_char_small (-0.15 at 500) and on the embedded default
# (-0.10 at 900), and its samples judged better (AR-judged NLL 2.645 against 2.917): BENCHMARKS.md, "Diffusion sample
# efficiency". Evaluation still scores the full ELBO. The embedded default (`get_config`) and the Shakespeare configs
# train their masked arms so; `base_config`, and with it the papers' protocols, Sudoku and the thought wing, keep
# t ~ U[0, 1].
CLIPPED_TIME_WINDOW = (0.3, 0.8)


def clip_training_times(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets CLIPPED_TIME_WINDOW on a config whose objective is the masked ELBO (in place; returns it); other objectives
  (the AR arm, the beyond-masking arms) are left alone."""
  if c.diffusion.objective == "elbo":
    c.diffusion.time_low, c.diffusion.time_high = CLIPPED_TIME_WINDOW
  return c


def beyond_masking_arm(c: ml_collections.ConfigDict, arm: str) -> ml_collections.ConfigDict:
  """Turns a transformer diffusion config into the issue-12 arm `arm` (in place; returns it):

  * "duo":     uniform-state diffusion with Duo's soft-token curriculum for the first 20% of the updates (Duo's
               curriculum ends at 200k of 1M steps), x_0 "mean" parameterization (Duo's), ancestral sampler.
  * "sedd":    SEDD's score entropy on the absorbing process, Tweedie sampler.
  * "embedding": continuous diffusion of the normalized token embeddings (dlm_jax/diffusion/gaussian.py: VDM's
               bound, CDCD's expected-embedding estimate and rounding loss), DDIM sampler.
  * "duo_dcd": the distillation student of a "duo" run (diffusion.objective="dcd"; `launch.distill` fills in the
               teacher): T = sample.steps teacher steps, 5 rounds of num_steps / 5 updates whose gaps are 1/T, 2/T, ...,
               16/T, so that the last round's student is meant for T / 16 steps (4 for T = 64).
  The uniform, score and Gaussian processes need the noise level, which masking shows through the mask count: these
  arms turn time conditioning on, and pay for its MLP (2 width^2 + 2 width parameters) with a narrower SwiGLU, so that
  every arm keeps the baseline's parameter count (tests/test_configs.py)."""
  if arm not in ("duo", "sedd", "duo_dcd", "embedding"):
    raise ValueError(f"Unknown arm {arm!r}: 'duo', 'sedd', 'duo_dcd' or 'embedding'.")
  width, layers = int(c.model.width), int(c.model.num_layers)
  c.model.time_conditioning = True
  c.model.mlp_dim = int(c.model.mlp_dim) - round((2 * width * width + 2 * width) / (3 * width * layers))
  c.sample.reveal_noise = sampling.SamplerConfig.reveal_noise  # the masked sampler's option back to its default
  if arm == "embedding":
    c.diffusion.objective = "embedding"
    c.diffusion.loss_chunk = 0
    c.sample.method = "ddim"
    return c
  if arm == "sedd":
    c.diffusion.objective = "sedd"
    c.diffusion.sedd_process = "absorbing"
    c.sample.method = "tweedie"
    return c
  c.diffusion.objective = "duo"
  c.diffusion.curriculum_steps = int(c.train.num_steps) // 5
  c.sample.method = "ancestral"
  if arm == "duo_dcd":
    c.diffusion.objective = "dcd"
    c.diffusion.curriculum_steps = 0  # (the teacher's curriculum; the student trains on hard tokens)
    c.diffusion.distill_teacher_steps = int(c.sample.steps)
    c.diffusion.distill_round_steps = max(int(c.train.num_steps) // 5, 1)
    c.optimizer.warmup_steps = 0  # the student starts from trained weights
  return c


def mdlm_recipe(c: ml_collections.ConfigDict, num_steps: int) -> ml_collections.ConfigDict:
  """MDLM's "small" model and training recipe (Sahoo et al. 2024; its configs/config.yaml and model/small.yaml) on the
  config `c` (in place; returns it): 12 layers, 12 heads, width 768, dropout 0.1 (SwiGLU 2048 where the DiT has GELU
  3072: the same parameters), no time conditioning; the log-linear schedule and the continuous-time NELBO; AdamW lr
  3e-4 after 2,500 warmup steps then constant, b2 0.999, no weight decay, gradient clip 1.0; EMA 0.9999; batch 512;
  every token of a window scored (eval.score_all_tokens)."""
  c.diffusion.objective = "elbo"
  c.diffusion.schedule = "loglinear"
  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 12, 12, 768, 2048
  c.model.dropout = 0.1
  c.model.time_conditioning = False
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 2500
  c.optimizer.min_lr_ratio = 1.0  # constant after the warmup (MDLM's constant_warmup)
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 1.0
  c.train.batch_size = 512
  c.train.num_steps = num_steps
  c.train.ema_decay = 0.9999
  c.train.log_every = 500
  c.train.checkpoint_every = 5000
  c.train.sample_every = 0
  c.eval.every = 10_000
  c.eval.score_all_tokens = True
  return c


def causal_arm(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The AR control arm of a config (in place; returns it): the same backbone causal, next-token loss; its
  evaluation scores tokens 2..L given the first (a causal model has no distribution for token 1 without a BOS)."""
  c.model.causal = True
  c.diffusion.objective = "autoregressive"
  c.eval.score_all_tokens = False
  return c


def tiny_arm(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A protocol config at test size (in place; returns it): its data path, layout, splits and scoring kept; 2 layers
  x 32, 8 updates of 8 windows, one evaluation of 8 windows."""
  c.model.num_layers, c.model.num_heads, c.model.width, c.model.mlp_dim = 2, 2, 32, 64
  c.diffusion.loss_chunk = 0
  c.optimizer.warmup_steps = 2
  c.train.batch_size, c.train.grad_accum_steps, c.train.num_steps = 8, 1, 8
  c.train.log_every = c.train.checkpoint_every = c.eval.every = 8
  c.eval.num_windows, c.eval.batch_size = 8, 8
  c.sample.steps = 8
  return c


def model_config(name: str) -> ml_collections.ConfigDict:
  """The fields of one denoiser (config.model) with their defaults: "transformer", "eco_hybrid" or "hrm".

  Generated from the model's config dataclass, where every field is declared and documented once
  (dlm_jax/models/base.py for the shared fields; transformer.py, eco_hybrid.py, hrm.py for each model's own).
  Swap a config's denoiser with `c.model = default.model_config("hrm")` and then set sizes."""
  return ml_collections.ConfigDict({"name": name, **models.config_defaults(name)})


def bench_config(vocab_size: int, sample_batch: int = 64, sample_new_tokens: int = 256,
                 sample_steps: int = 64) -> ml_collections.ConfigDict:
  """Settings of `python -m launch.bench` (synthetic tokens: throughput does not depend on the text)."""
  b = ml_collections.ConfigDict()
  b.vocab_size = vocab_size  # 0: a character-sized vocabulary (128)
  b.train_steps = 20  # timed training steps after warm-up
  b.warmup_steps = 3
  b.sample_batch = sample_batch  # sampler: B sequences of `sample_new_tokens` new tokens in `sample_steps` steps
  b.sample_new_tokens = sample_new_tokens  # at most data.seq_len
  b.sample_steps = sample_steps
  return b
