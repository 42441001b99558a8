"""dlm_jax: masked (absorbing-state) diffusion language models in JAX/Flax NNX."""
import setuptools

# Pins that hold on the dev/CI machine (Python 3.11: jax 0.10.2, flax 0.12.8) and on the
# GPU machine (Python 3.12: jax 0.11.2, flax 0.12.10, orbax 0.12.4). See docs in README.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12.4,<0.13",
    "grain>=0.2.18,<0.3",
    "chex>=0.1.90",
    "absl-py>=2.1",
    "ml_collections>=1.0",
    "sentencepiece>=0.2.0",
    "tensorboardX>=2.6",
    "numpy>=1.26",
    "scipy>=1.11",  # (a jax dependency) log Phi for the Gaussian duality table, diffusion/duality.py
    "regex>=2023.12",  # Unicode grapheme-cluster properties (UAX #29, InCB) for script-aware corruption
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3.6", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "matplotlib>=3.8",
             "tokenizers>=0.20", "pyarrow>=14", "safetensors>=0.4", "jinja2>=3"],
    # Hugging Face tokenizers (data.tokenizer="hf:PATH"), .parquet inputs of launch.prepare_data, safetensors
    # checkpoints (--init_from=hf:PATH) and chat templates (data.chat_template="tokenizer"); not in the GPU machine's
    # wheels, where those tests skip.
    "hf": ["tokenizers>=0.20", "pyarrow>=14", "safetensors>=0.4", "jinja2>=3"],
    "notebooks": ["jupyterlab>=4", "matplotlib>=3.8"],
    "cuda": ["jax[cuda12]>=0.10.2,<0.12"],
}

setuptools.setup(
    name="dlm_jax",
    version="0.1.0",
    description="Masked-diffusion language models in JAX/Flax NNX (MDLM/MD4/LLaDA family).",
    packages=setuptools.find_packages(include=["dlm_jax", "dlm_jax.*", "launch", "configs"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
