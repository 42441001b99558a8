"""Reverse samplers: one jitted loop, confidence-based reveal or ancestral, trajectory recording."""
from dlm_jax.sampling.sampler import SampleOutput, SamplerConfig, autoregressive_sample, make_sampler, sample
