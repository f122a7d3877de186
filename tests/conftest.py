"""Test-wide setup: every test sees 8 fake CPU devices, so sharding is always exercised.

The device count must be fixed before the JAX backend initialises, hence at import time here.
"""

import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

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
