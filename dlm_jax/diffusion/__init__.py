"""Discrete-diffusion math as pure functions of arrays: schedules, the masked forward process, losses and the ELBO
(forward, losses, schedules), uniform-state diffusion (uniform), Duo's Gaussian duality (duality), SEDD's score
entropy (score_entropy), Gaussian embedding diffusion (gaussian), importance-sampled times (time_sampling). The
training objectives built from them are dlm_jax/objectives."""
from dlm_jax.diffusion import duality, forward, losses, schedules, score_entropy, time_sampling, uniform
from dlm_jax.diffusion.schedules import MaskingSchedule
