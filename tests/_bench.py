"""Loads a script of benchmarks/ as a module, for the tests that check its pure parts."""

import importlib.util
import pathlib
import sys
from types import ModuleType

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
  """benchmarks/<name>.py, imported once per process as `_bench_<name>`."""
  spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module
