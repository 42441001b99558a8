"""Thought tensors (seed 003): a Gaussian n-D memory that a masked-diffusion LM denoises beside its text and rewrites
after each generation. README.md in this folder says what each module holds and how to run it.

Registered by import path: models.MODELS["thought"] (model.REGISTERED), objectives.OBJECTIVES["thought"]
(objective.ThoughtELBO), sampling.SAMPLERS["thought"] (sampler.make_sampler)."""
