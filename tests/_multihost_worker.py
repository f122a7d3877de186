"""One process of tests/test_multihost.py: ``python _multihost_worker.py PORT PROCESS_ID``.

Two of these form a 2-process, 4-device CPU cluster; each feeds its half of a fixed batch and
prints the jitted results as JSON on its last line.
"""

import json
import sys

from mvp_jax import sharding

port, process_id = int(sys.argv[1]), int(sys.argv[2])
# Before any other JAX call: gloo collectives and 2 CPU devices per process.
sharding.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                                local_device_count=2)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

mesh = sharding.make_mesh((-1, 1))
full = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 7.0,
        "w": np.linspace(0.0, 1.0, 8, dtype=np.float32)}
sharding.check_batch_divisible(8, mesh)
local = {k: v[process_id * 4:(process_id + 1) * 4] for k, v in full.items()}
batch = sharding.global_batch(local, mesh)


@jax.jit
def stats(batch):
  x, w = batch["x"], batch["w"]
  # "ordered" checks that process 0's rows come first in the global batch.
  rows = jnp.arange(x.shape[0], dtype=jnp.float32)[:, None]
  return {"sum": jnp.sum(x), "mean": jnp.mean(x), "ordered": jnp.sum(rows * x),
          "weighted": jnp.sum(w[:, None] * x) / jnp.sum(w)}


out = jax.jit(stats, out_shardings=NamedSharding(mesh, P()))(batch)
print(json.dumps({
    "process_index": jax.process_index(),
    "process_count": jax.process_count(),
    "devices": jax.device_count(),
    "local_devices": jax.local_device_count(),
    "mesh": dict(mesh.shape),
    "global_shape": list(batch["x"].shape),
    "main": sharding.is_main_process(),
    **{k: float(v) for k, v in out.items()},
}))
jax.distributed.shutdown()
