"""Test-wide setup: every test sees 8 fake CPU devices, so sharding is always exercised, and
compiles with XLA's fast-compile options (tiny_bert.TEST_XLA_FLAGS; MVP_JAX_TEST_FULL_XLA=1 for
XLA's defaults).

Both must be fixed before the JAX backend initialises, hence at import time here.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One compilation cache for the whole session, shared with the pytest-xdist workers and the
# train.py subprocesses the tests start (they inherit the variable): the tiny runs compile the
# same steps many times, and compiling dominates their cost. The process that made the folder
# removes it when it exits, so test runs do not leave caches behind in the temp dir.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mvp_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

from tiny_bert import TEST_XLA_FLAGS  # noqa: E402

# XLA's fast-compile options (tiny_bert.TEST_XLA_FLAGS), set before the backend reads its flags;
# the subprocesses the tests start get them from tiny_bert.xla_flags.
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

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


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory, worker_id) -> pathlib.Path:
  """A temporary folder of this test session that all its pytest-xdist workers share (for
  expensive fixtures built once, see tiny_bert.build_once)."""
  base = tmp_path_factory.getbasetemp()
  return base if worker_id == "master" else base.parent


# Modules of long tests (other processes, real MiniLM, several runs each), collected first.
# pytest-xdist's worksteal gives each worker a contiguous share of the collection and steals
# from the end of it, so a long test collected last keeps one core busy while the other waits.
LONG_FIRST = ("test_train_multihost.py", "test_notebooks.py", "test_reliability.py")


def pytest_collection_modifyitems(config, items):
  items.sort(key=lambda item: item.path.name not in LONG_FIRST)  # stable: order kept otherwise
