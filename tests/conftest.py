"""Test-wide setup: every test sees 8 fake CPU devices, so sharding is always exercised.

The device count must be fixed before the JAX backend initialises, hence at import time here.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One compilation cache for the whole session, shared with the train.py subprocesses the tests
# start: the tiny runs compile the same steps many times, and compiling dominates their cost.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="mvp_jax_xla_cache_"))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real benchmark files in ../shared/data (present in CI)."""
  path = SHARED / "data"
  if not path.is_dir():
    pytest.fail(f"{path} is missing: the tests need ../shared/data beside the checkout")
  return path
