"""Masked-diffusion math as pure functions of arrays: schedules, the forward process, losses and the ELBO."""
from dlm_jax.diffusion import forward, losses, schedules
from dlm_jax.diffusion.objectives import DiffusionObjective
from dlm_jax.diffusion.schedules import MaskingSchedule
