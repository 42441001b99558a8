"""Shared test setup: strict numpy rank promotion, 64-bit off, and JAX's persistent compilation cache.

The cache (default `.jax_cache/` in the repo, override with JAX_COMPILATION_CACHE_DIR) makes a second run of the suite
several times faster on CPU; GUIDE.md §3 measured 49 s -> 13 s.
"""
import os
import pathlib

import jax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: longer than a few seconds on 2 CPU cores; excluded by default")


@pytest.fixture(scope="session")
def repo_root():
  return REPO
