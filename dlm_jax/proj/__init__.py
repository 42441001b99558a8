"""Research wings (big_vision's `proj/`): an idea that is not yet the library's, with its own model, objective,
sampler, metrics, configs, CLIs and README in one folder. A wing imports the library; the library never imports a
wing, it names the wing's components by import path in its registries (dlm_jax/registry.py)."""
