"""Discrete-diffusion math as pure functions of arrays: schedules, the masked forward process, losses and the ELBO
(forward, losses, schedules), uniform-state diffusion (uniform), Duo's Gaussian duality (duality), SEDD's score
entropy (score_entropy), and the training objectives built from them (objectives)."""
from dlm_jax.diffusion import duality, forward, losses, schedules, score_entropy, uniform
from dlm_jax.diffusion.objectives import DiffusionObjective
from dlm_jax.diffusion.schedules import MaskingSchedule
