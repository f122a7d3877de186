"""Meshes, partition rules over parameter paths, batch sharding and multi-host helpers.

"pjit" here is ``jax.jit`` with ``NamedSharding``s over a ``Mesh(('data', 'model'))`` whose axes are
``Auto`` (``jax.make_mesh`` defaults to Explicit axes in JAX 0.10, which breaks the embedding
gather on batch-sharded ids). Parameters are sharded by regex rules over their '/'-joined paths;
scores use the same paths as their kernels, so they get the kernel's sharding without a rule of
their own. Batches are split along 'data'. The same code runs on 1 device, on 8 fake CPU devices
and on a multi-host slice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Rules = Sequence[tuple[str, P]]

#: Everything replicated: plain data parallelism.
DATA_PARALLEL_RULES: tuple[tuple[str, P], ...] = ((r".*", P()),)

#: Megatron-style tensor parallelism for BERT (HF Flax names, kernels are [in, out]): the first
#: matmul of each block (query/key/value, intermediate) is split by output columns, the second
#: (attention output, output) by input rows, so each block needs one all-reduce. Biases of
#: column-split layers are split with their columns; those of row-split layers are replicated
#: (they are added after the reduction). Everything else (embeddings, LayerNorm, pooler, heads)
#: is replicated. Rules search the whole path, so optimizer moments (``.../mu/params/<path>``)
#: follow their parameters too.
BERT_TENSOR_PARALLEL_RULES: tuple[tuple[str, P], ...] = (
    (r"attention/self/(query|key|value)/kernel$", P(None, "model")),
    (r"attention/self/(query|key|value)/bias$", P("model")),
    (r"attention/output/dense/kernel$", P("model", None)),
    (r"intermediate/dense/kernel$", P(None, "model")),
    (r"intermediate/dense/bias$", P("model")),
    (r"(^|/)output/dense/kernel$", P("model", None)),
    (r".*", P()),
)


def make_mesh(
    mesh_shape: Sequence[int] = (-1, 1),
    axis_names: Sequence[str] = ("data", "model"),
    devices: Sequence[Any] | None = None,
) -> Mesh:
  """A device mesh with ``Auto`` axes.

  Args:
    mesh_shape: size of each axis; one entry may be -1 for "all remaining devices".
    axis_names: names of the axes, as many as ``mesh_shape``.
    devices: the devices to use; default all ``jax.devices()`` (all processes).

  Returns:
    A ``jax.sharding.Mesh`` whose axis types are all ``AxisType.Auto``.

  Raises:
    ValueError: the shape does not match the number of devices.

  >>> mesh = make_mesh((-1, 1), devices=jax.devices()[:1])
  >>> dict(mesh.shape)
  {'data': 1, 'model': 1}
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [int(s) for s in mesh_shape]
  if len(shape) != len(axis_names):
    raise ValueError(
        f"mesh_shape {tuple(shape)} and axis_names {tuple(axis_names)} differ in length"
    )
  n = len(devices)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh_shape {tuple(shape)} may contain at most one -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh_shape {tuple(shape)} must contain positive sizes (or one -1)")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if n % known:
      raise ValueError(
          f"mesh_shape {tuple(shape)} does not divide the {n} devices: the fixed axes need a "
          f"multiple of {known} devices"
      )
    shape[shape.index(-1)] = n // known
  if int(np.prod(shape)) != n:
    raise ValueError(
        f"mesh_shape {tuple(shape)} needs {int(np.prod(shape))} devices but {n} are available; "
        "use -1 for the data axis to take all remaining devices"
    )
  axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
  # jax.make_mesh orders devices for the physical topology (ICI rings on TPU) and spans processes.
  return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=axis_types, devices=devices)


def _key_str(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _axis_size(mesh: Mesh, axis: Any) -> int:
  names = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[a] for a in names]))


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh, path: str) -> P:
  """Drops the mesh axes of ``spec`` that do not divide the corresponding dimension."""
  if len(spec) > len(shape):
    logging.info("sharding: %s has rank %d < spec %s; replicated", path, len(shape), spec)
    return P()
  fitted = []
  for dim, axis in zip(shape, spec, strict=False):
    if axis is None or dim % _axis_size(mesh, axis) == 0:
      fitted.append(axis)
    else:
      logging.info(
          "sharding: %s dim %d (size %d) is not divisible by mesh axis %s (size %d); "
          "replicated along it", path, len(fitted), dim, axis, _axis_size(mesh, axis))
      fitted.append(None)
  return P(*fitted)


def spec_for_path(path: str, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
  """The ``PartitionSpec`` of one leaf: first rule whose regex ``re.search``-es ``path``.

  A leaf no rule matches is replicated. Mesh axes that do not divide a dimension are dropped.

  >>> mesh = make_mesh(devices=jax.devices()[:1])
  >>> spec_for_path("bert/encoder/layer/0/output/dense/kernel", (8, 4), mesh,
  ...               BERT_TENSOR_PARALLEL_RULES)
  P('model', None)
  """
  for pattern, spec in rules:
    if re.search(pattern, path):
      return _fit_spec(spec, shape, mesh, path)
  return P()


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """A tree of ``NamedSharding`` matching ``tree``, by path rules.

  Args:
    tree: any pytree of arrays / ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``); leaves
      without a shape (Python scalars) are replicated.
    mesh: the device mesh.
    rules: ``(regex, PartitionSpec)`` pairs; the first ``re.search`` match on the leaf's
      '/'-joined path wins (see :data:`BERT_TENSOR_PARALLEL_RULES`).

  Returns:
    A tree with the structure of ``tree`` whose leaves are ``NamedSharding``s; pass it as
    ``out_shardings`` of a jitted init or to ``jax.device_put``.

  >>> mesh = make_mesh(devices=jax.devices()[:1])
  >>> tree_shardings({"w": np.zeros((2, 2))}, mesh, DATA_PARALLEL_RULES)["w"].spec
  P()
  """
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

  def leaf_sharding(path: Sequence[Any], leaf: Any) -> NamedSharding:
    name = "/".join(_key_str(k) for k in path)
    shape = tuple(getattr(leaf, "shape", ()))
    for pattern, spec in compiled:
      if pattern.search(name):
        return NamedSharding(mesh, _fit_spec(spec, shape, mesh, name))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch arrays split along their first dimension over the 'data' axis."""
  return NamedSharding(mesh, P("data"))


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
  """Raises a clear ``ValueError`` unless the 'data' axis (and the processes) divide the batch.

  >>> check_batch_divisible(32, make_mesh(devices=jax.devices()[:1]))
  """
  data = mesh.shape["data"]
  if global_batch_size % data:
    raise ValueError(
        f"the global batch size {global_batch_size} is not divisible by the mesh 'data' axis "
        f"({data} devices): use a multiple of {data} or change the mesh shape"
    )
  procs = jax.process_count()
  if global_batch_size % procs:
    raise ValueError(
        f"the global batch size {global_batch_size} is not divisible by the {procs} processes"
    )


def local_data_shards(mesh: Mesh) -> int:
  """How many distinct slices of the 'data' axis this process's devices hold."""
  axis = mesh.axis_names.index("data")
  me = jax.process_index()
  rows = {idx[axis] for idx in np.ndindex(mesh.devices.shape)
          if mesh.devices[idx].process_index == me}
  return len(rows)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays, split on 'data', from this process's slice of a batch.

  Each process passes its own rows (``global_batch_size / process_count`` of them, e.g. from a
  ``BatchIterator`` with ``process_index``/``process_count``); with one process that is the whole
  batch. Works the same single- and multi-process (``jax.make_array_from_process_local_data``).

  Args:
    local_batch: name -> array [local_batch, ...] (any dtype), all with the same first dim.
    mesh: the device mesh.

  Returns:
    name -> ``jax.Array`` [global_batch, ...] sharded with :func:`batch_sharding`.

  >>> mesh = make_mesh(devices=jax.devices()[:1])
  >>> global_batch({"x": np.ones((4, 3), np.int32)}, mesh)["x"].shape
  (4, 3)
  """
  sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in local_batch.items()}
  if any(s is None for s in sizes.values()) or len(set(sizes.values())) > 1:
    raise ValueError(f"all batch arrays need the same leading (batch) dimension, got {sizes}")
  if not sizes:
    return {}
  local = next(iter(sizes.values()))
  shards = local_data_shards(mesh)
  if local % shards:
    raise ValueError(
        f"the per-process batch of {local} rows is not divisible by this process's {shards} "
        "slices of the mesh 'data' axis: change the batch size or the mesh shape"
    )
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_count: int | None = None,
) -> None:
  """``jax.distributed.initialize`` with the CPU settings it needs. Call before any JAX work.

  On CPU, cross-process collectives need gloo, and the number of (fake) CPU devices per process
  must be fixed before the backend starts; both settings only affect the CPU backend, so they are
  harmless on GPU/TPU. With all arguments None, JAX auto-detects the cluster (TPU pods, SLURM).

  Args:
    coordinator_address: "host:port" of process 0.
    num_processes: number of processes.
    process_id: this process's index in [0, num_processes).
    local_device_count: CPU devices per process (``jax_num_cpu_devices``); None leaves it.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if local_device_count is not None:
    jax.config.update("jax_num_cpu_devices", int(local_device_count))
  jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
  )


def is_main_process() -> bool:
  """True on process 0, the one that logs and writes files."""
  return jax.process_index() == 0
