"""The train step compiled for a GPU on a machine without one: what each variant launches.

XLA compiles for a described GPU without the device (`jax.experimental.topologies` with a
target config: deviceless ahead-of-time compilation). This script compiles the real
`trainer.train_step` of each `step.py` variant that way, with the masks traced as for a GPU
(`masks.target_platform("gpu")`), and describes the optimised program (`hlo_program.describe`):
kernels launched per step, bytes they move, host round trips (conditionals), loops, and the
compiled memory analysis. It times nothing. `report.py` sets these counts against the step
times measured on a GPU (`benchmarks/results/step_accelerator.json`) in docs/results.md.

Needs JAX's CUDA plugin at this process's jax version, in its own environment (it is not a
test dependency; on a machine without a GPU the plugin only compiles):

  python3 -m venv .venv-gpu-aot && .venv-gpu-aot/bin/pip install -e . "jax[cuda13]==$(
      .venv/bin/python -c 'import jax; print(jax.__version__)')"
  .venv-gpu-aot/bin/python benchmarks/gpu_program.py                 # current code
  git worktree add /tmp/mvp-d1e0fa9 d1e0fa9                          # the code the H200 timed
  .venv-gpu-aot/bin/python benchmarks/gpu_program.py --code-root /tmp/mvp-d1e0fa9 \\
      --variants dense,magnitude,topk_local,topk_global,sigmoid_threshold,l0 \\
      --out benchmarks/results/gpu_program_d1e0fa9.json

What differs from a run on the GPU: the compile has no device to autotune on (XLA picks its
default GEMM configurations), and it has no scratch-size data for CUB's sort, so a sort compiles
to XLA's fallback algorithm (the ``*_sort`` variants are recorded but are not what a GPU runs).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from typing import Any
from unittest import mock

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gpu_program.json"
TARGETS = {"h100": HERE / "gpu_targets" / "h100.textproto"}
SHAPES = {"minilm": (32, 64), "bert-base": (8, 128)}  # issue 6's batch x sequence length
DEFAULT_VARIANTS = (
  "dense", "magnitude", "topk_local", "topk_global", "sigmoid_threshold", "l0",
  "topk_local_2bit", "topk_local_stacked", "topk_global_stacked", "topk_local_percond",
  "sigmoid_threshold_percond",
)


def _import_code(code_root: pathlib.Path | None) -> tuple[Any, Any]:
  """(step, mvp_jax) modules: this checkout's, or mvp_jax from ``code_root`` (another commit)
  under this checkout's benchmark code."""
  if code_root is not None:
    sys.path.insert(0, str(code_root))
  import mvp_jax  # noqa: PLC0415 - after the path is set

  sys.path.insert(0, str(HERE))
  import step  # noqa: PLC0415 - imports mvp_jax, already the chosen one

  return step, mvp_jax


def _traced_for_gpu(masks: Any):
  """`masks.target_platform("gpu")`; for code from before it existed, the module's own
  `jax.default_backend()` reports "gpu" instead."""
  if hasattr(masks, "target_platform"):
    return masks.target_platform("gpu")
  jax_view = types.SimpleNamespace(**vars(masks.jax))
  jax_view.default_backend = lambda: "gpu"
  return mock.patch.object(masks, "jax", jax_view)


def gpu_mesh(target: pathlib.Path) -> Any:
  """A one-GPU ("data", "model") mesh of the device that ``target`` (a GpuTargetConfig text
  proto) describes, with no device attached."""
  from jax.experimental import topologies  # noqa: PLC0415

  topology = topologies.get_topology_desc(
    platform="cuda", target_config=target.read_text(), topology="1x1x1"
  )
  return topologies.make_mesh(topology, (1, 1), ("data", "model"))


def compile_variant(
  step: Any, name: str, model: Any, params: Any, batch_shape: tuple[int, int], mesh: Any
) -> dict[str, Any]:
  """Compiles one variant's train step for ``mesh``'s GPU; its program's description.

  Args:
    step: the benchmark module (see `_import_code`); mvp_jax is the one it imported.
    name: a key of `step.JAX_VARIANTS`.
    model: the Linen classification model.
    params: its abstract params (`jax.ShapeDtypeStruct` leaves).
    batch_shape: (batch size, sequence length).
    mesh: from `gpu_mesh`.

  Returns:
    `hlo_program.describe` of the optimised program, plus memory (`step.memory_of`) and
    lower_s / compile_s.
  """
  import hlo_program  # noqa: PLC0415
  import jax  # noqa: PLC0415

  from mvp_jax import masks, pruning, sharding, trainer  # noqa: PLC0415

  spec = step._spec_for(name, 1.0)
  scores = {}
  if spec is not None and spec.uses_scores:
    scores = jax.eval_shape(lambda p: pruning.init_scores(p, spec, jax.random.PRNGKey(0)), params)
  tx = step.variant_optimizer(spec, params, scores, level=0.1, tau=0.69, l0_lambda=1.0,
                              sigmoid_lambda=1.0)
  opts = trainer.StepOptions(kind="classification", spec=spec)
  key_data = jax.random.key_data(jax.random.PRNGKey(0))
  _, abstract, _, jit_step = step.jit_train_step(model, tx, opts, params, scores, key_data, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
    for k, v in step.make_batch(model.config, *batch_shape).items()
  }
  start = time.perf_counter()
  with step.variant_trace_context(name), _traced_for_gpu(masks):
    lowered = jit_step.trace(abstract, batch, None).lower()
  lower_s = time.perf_counter() - start
  compiled = lowered.compile()
  out = hlo_program.describe(compiled.as_text())
  out.update(memory=step.memory_of(compiled), lower_s=round(lower_s, 1),
             compile_s=round(time.perf_counter() - start - lower_s, 1))
  return out


def abstract_model(step: Any, label: str) -> tuple[Any, Any]:
  """(model, abstract params) of ``label``'s shape: no weights are materialised."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from mvp_jax.models import bert  # noqa: PLC0415

  config = step.minilm_config() if label == "minilm" else step.bert_base_config()
  model = bert.BertForSequenceClassification(config)
  ids = jnp.ones((1, 8), jnp.int32)
  params = jax.eval_shape(
    lambda r: model.init(r, ids, ids, jnp.zeros_like(ids))["params"], jax.random.PRNGKey(0)
  )
  return model, params


def _plugin_version() -> str | None:
  """The installed JAX CUDA plugin's distribution and version."""
  for dist in ("jax-cuda13-plugin", "jax-cuda12-plugin"):
    try:
      return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
      continue
  return None


def _git_commit(root: pathlib.Path) -> str | None:
  """The short commit of the checkout at ``root`` (None without git)."""
  try:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
  code_root = None if args.code_root is None else pathlib.Path(args.code_root).resolve()
  step, mvp_jax = _import_code(code_root)
  code = pathlib.Path(mvp_jax.__file__).resolve().parents[1]
  import jax  # noqa: PLC0415

  unknown = [v for v in args.variants if v not in step.JAX_VARIANTS]
  if unknown:
    raise SystemExit(f"unknown variant(s) {unknown}; choose from {sorted(step.JAX_VARIANTS)}")
  target = TARGETS[args.target]
  mesh = gpu_mesh(target)
  out: dict[str, Any] = {
    "environment": {
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "jax": jax.__version__,
      "cuda_plugin": _plugin_version(),
      "target": args.target,
      "device": str(mesh.devices.flat[0].device_kind),
      "code": str(code),
      "commit": _git_commit(code),
    },
    "models": {},
  }
  if args.out.exists():  # merge: keep what other invocations wrote
    out["models"] = json.loads(args.out.read_text()).get("models", {})
  for label in args.models:
    model, params = abstract_model(step, label)
    entry = out["models"].setdefault(label, {"variants": {}})
    entry["batch_shape"] = list(SHAPES[label])
    for name in args.variants:
      print(f"[{label}] compiling {name} ...", flush=True)
      desc = compile_variant(step, name, model, params, SHAPES[label], mesh)
      entry["variants"][name] = desc
      print(f"[{label}] {name}: {desc['kernels']} kernels, {desc['bytes'] / 1e9:.2f} GB, "
            f"{desc['host_syncs']} host round trips, peak "
            f"{desc['memory']['peak'] / 2**20:.0f} MiB (compile {desc['compile_s']} s)",
            flush=True)
      args.out.parent.mkdir(parents=True, exist_ok=True)
      tmp = args.out.with_suffix(".json.tmp")
      tmp.write_text(json.dumps(out, indent=1) + "\n")
      tmp.replace(args.out)
  return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--target", choices=sorted(TARGETS), default="h100",
                 help="the GPU described to the compiler (default h100)")
  p.add_argument("--models", default="minilm,bert-base",
                 help="comma-separated, of: " + ", ".join(SHAPES))
  p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                 help="comma-separated keys of step.JAX_VARIANTS")
  p.add_argument("--code-root", default=None,
                 help="compile mvp_jax from this checkout (another commit) instead of this one")
  p.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = p.parse_args(argv)
  args.models = [m for m in args.models.split(",") if m]
  args.variants = [v for v in args.variants.split(",") if v]
  unknown = [m for m in args.models if m not in SHAPES]
  if unknown:
    p.error(f"unknown model(s) {unknown}; choose from {sorted(SHAPES)}")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  # Before jax is imported: no local GPU is wanted (compile only), and the plugin's check of the
  # installed CUDA libraries needs a driver this machine does not have.
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  run(args)


if __name__ == "__main__":
  main()
