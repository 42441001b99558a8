"""Reverse samplers: one per process family (sampler.SAMPLERS), the masked one built from decoding components
(strategies.py); text in and out."""
from dlm_jax.sampling.sampler import (SAMPLERS, SampleOutput, SamplerConfig, autoregressive_sample, make_sampler,
                                      sample, stateless)
from dlm_jax.sampling.text import (ContinuedOutput, Generation, TextSamples, continue_past_window, generate,
                                   make_text_sampler, prompt_batch)
