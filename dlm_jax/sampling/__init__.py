"""Reverse samplers: one jitted loop, confidence-based reveal or ancestral, trajectory recording; text in and out."""
from dlm_jax.sampling.sampler import (SampleOutput, SamplerConfig, autoregressive_sample, make_sampler, sample,
                                      stateless)
from dlm_jax.sampling.text import TextSamples, make_text_sampler, prompt_batch
