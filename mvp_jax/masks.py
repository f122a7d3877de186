"""Binarizers for movement pruning: exact top-k without sorting, thresholds, magnitude, L0.

Every mask here is a float32 array with the shape of its scores. The score-based binarizers
(`topk_mask`, `global_topk_masks`, `sigmoid_threshold_mask`) are straight-through: their forward
value is the hard 0/1 mask and their backward is the identity w.r.t. the scores, so with
``W' = W * M``:

  dL/dS = dL/dW' * W        (no mask factor: pruned weights' scores keep moving)
  dL/dW = dL/dW' * M

`magnitude_mask` passes no gradient at all (the mask is a constant of W), and `l0_mask` is ordinary
autodiff through the hard-concrete reparameterisation.

Top-k without sorting
---------------------
The k-th largest score is found by a radix search on an order-preserving uint32 view of the
float32 scores (`kth_largest_key`): on CPU two bits per pass, 16 passes, each reading the scores
once and counting in one fused reduction how many reach each of the three candidates for the
next two bits (`count_true_many`); elsewhere a one-bit bisection, 32 passes of one compare and
one count. ``k`` is a traced int32, so a moving sparsity schedule never recompiles, and a global
top-k over many tensors just sums the per-tensor counts (no concatenation): under sharding a
pass is a local count plus a combination of the partial counts across shards (scalar
all-reduces in the one-bit form; small all-gathers of per-row uint16 or per-shard int32 counts
in the two-bit form), never a gather of the scores. Ties at the
threshold value are broken deterministically: among the scores equal to the threshold, the first
ones in (leaf order, row-major flattened index) order are kept. The ties' quota is handed out in
leaf order, so at most one matrix per group keeps only some of its ties; a second bisection, over
that matrix's row-major index and inside a ``lax.cond`` (one per matrix, or per stack),
finds where they stop. Exactly ``k`` entries are kept. Off CPU those conds, and soft movement's
minimum-retention ones, sit behind one shared cond per mask computation
(`default_joint_conds`): XLA's GPU runtime waits for the device on every conditional.

Each pass counts every matrix in its own reduction, unless same-shaped matrices are given one
stacking key (``stack_keys``; `pruning.PruningSpec.stack_search` keys each kernel's copies in
all layers): they are stacked once into a [P, ...] block that a pass counts in one reduction
keeping the member axis, so a pass launches one reduction per block instead of one per matrix.

Keep counts
-----------
``k = keep_count(level, n)`` is floor(level * n) where ``level`` is first rounded to float32 (as
it is inside a jitted step) and the product is computed exactly (integer limb arithmetic, not a
float32 multiply, whose rounding would be off by several units at n = 85M). This equals Python's
``int(v * n)`` for every ``v`` representable in float32 (then the double product is exact).
For a decimal level that float32 rounds down (0.7 -> 0.69999999), ``k`` can be one below the
decimal product when that product is an integer (0.7 * 10 -> 6): pass ``level`` slightly above
``j / n`` if an exact count ``j`` is required.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Hard-concrete constants of the reference code (Louizos et al. stretch interval and temperature).
L0_LEFT = -0.1
L0_RIGHT = 1.1
L0_BETA = 2.0 / 3.0
L0_U_MIN = 1e-4
L0_U_MAX = 0.9999

_PLATFORMS = ("cpu", "gpu", "tpu")
_target: str | None = None  # set by `target_platform` while it is active


def traced_platform() -> str:
  """The platform the masks are traced for: ``"cpu"``, ``"gpu"`` or ``"tpu"``.

  `jax.default_backend()` (``"cuda"`` and ``"rocm"`` read as ``"gpu"``), unless a
  `target_platform` block says otherwise. Every backend-dependent choice in this module (the
  search's bits per pass, narrow counts, where the conds sit, one search loop or several) reads
  it at trace time; the masks do not depend on it.
  """
  if _target is not None:
    return _target
  backend = jax.default_backend()
  return "gpu" if backend in ("cuda", "rocm") else backend


@contextlib.contextmanager
def target_platform(platform: str | None) -> Iterator[None]:
  """While active, trace the masks as for ``platform`` ("cpu", "gpu" or "tpu"; None: this
  process's default backend).

  For ahead-of-time compilation on a host of another platform: a train step traced on a CPU host
  for a GPU (`jax.experimental.topologies`, as ``benchmarks/gpu_program.py`` does) would
  otherwise get the CPU's choices, tuned for a CPU. A trace-time switch, not thread-safe: trace
  inside the block, compile and run anywhere.
  """
  global _target
  if platform is not None and platform not in _PLATFORMS:
    raise ValueError(f"target_platform: unknown platform {platform!r}; choose from {_PLATFORMS}")
  previous, _target = _target, platform
  try:
    yield
  finally:
    _target = previous


_INT32_MAX = 2**31 - 1
_LIMB = 12
_LIMB_MASK = (1 << _LIMB) - 1


# ----------------------------------------------------------------------------------------------
# Keep counts
# ----------------------------------------------------------------------------------------------


def keep_count(level: jax.typing.ArrayLike, n: int) -> jax.Array:
  """Exact ``floor(float32(level) * n)`` as an int32 scalar; ``level`` may be traced.

  Args:
    level: keep fraction, scalar. Cast to float32; NaN counts as 0 and values are clipped to
      [0, 1] (a traced level cannot raise, so it is clamped instead).
    n: static element count, ``0 <= n < 2**31``.

  Returns:
    [] int32, in [0, n].
  """
  n = int(n)
  if not 0 <= n <= _INT32_MAX:
    raise ValueError(f"keep_count: n={n} must be in [0, 2**31 - 1]")
  v = jnp.asarray(level, jnp.float32)
  v = jnp.where(jnp.isnan(v), 0.0, jnp.clip(v, 0.0, 1.0))
  bits = lax.bitcast_convert_type(v, jnp.int32)
  biased_exp = (bits >> 23) & 0xFF
  frac = bits & 0x7FFFFF
  # v = m * 2**-s exactly, m < 2**24; s >= 23 because v <= 1.
  m = jnp.where(biased_exp > 0, frac | 0x800000, frac)
  s = jnp.where(biased_exp > 0, 150 - biased_exp, 149)
  # m * n < 2**55 overflows int32: multiply in base-2**12 digits (each partial product < 2**25).
  n0, n1, n2 = n & _LIMB_MASK, (n >> _LIMB) & _LIMB_MASK, n >> (2 * _LIMB)
  m_lo, m_hi = m & _LIMB_MASK, m >> _LIMB
  c = [m_lo * n0, m_lo * n1 + m_hi * n0, m_lo * n2 + m_hi * n1, m_hi * n2]
  digits = []
  carry = jnp.int32(0)
  for ci in c:
    ci = ci + carry
    digits.append(ci & _LIMB_MASK)
    carry = ci >> _LIMB
  digits.append(carry)
  # Pad so that digits[a + j] exists for every shift a = s // 12 <= 12 and j <= 3.
  digits = jnp.stack(digits + [jnp.int32(0)] * 12)
  a, b = s // _LIMB, s % _LIMB
  # floor(X / 2**s) with X = sum_i d_i 2**(12 i): digits below a cannot carry into the result,
  # and every remaining term d_{a+j} 2**(12 j - b) is <= the result <= n, so nothing overflows.
  out = lax.dynamic_index_in_dim(digits, a, keepdims=False) >> b
  for j in range(1, 4):
    d = lax.dynamic_index_in_dim(digits, a + j, keepdims=False)
    out = out + (d << jnp.minimum(_LIMB * j - b, 31))
  return jnp.minimum(out, n).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Exact top-k selection (no gradient)
# ----------------------------------------------------------------------------------------------


def ordered_key(x: jax.Array) -> jax.Array:
  """Order-preserving uint32 view of float values: ``a < b`` iff ``key(a) < key(b)``.

  Args:
    x: any float array (cast to float32, which is exact for bf16/f16).

  Returns:
    uint32 array of ``x.shape``. -0.0 maps to the key of +0.0 so equal floats get equal keys;
    NaNs sort above +inf.
  """
  x = x.astype(jnp.float32)
  x = jnp.where(x == 0, jnp.float32(0), x)
  b = lax.bitcast_convert_type(x, jnp.uint32)
  negative = (b >> 31) == 1
  # Negative floats: larger magnitude must give a smaller key, so flip all bits; non-negative
  # floats go to the upper half of the range.
  return jnp.where(negative, ~b, b | jnp.uint32(0x80000000))


_U16_LIMIT = 2**16


def count_true(x: jax.Array) -> jax.Array:
  """[] int32: the number of True entries of the bool array ``x``, exactly.

  On CPU the count is first summed along the last axis in uint16 (exact while that axis is
  shorter than 2**16), then in int32: XLA's CPU backend vectorises narrow-integer reductions,
  and this makes every pass of the threshold search about 2.6x faster than one int32 sum
  (benchmarks/masks.py). Other backends sum in int32 directly. When the last axis is sharded,
  the per-row partial counts are what is all-reduced.
  """
  return _sum_true([x], batch=0, fused=False)[0]


def _narrow(x: jax.Array, batch: int = 0) -> bool:
  return (
    traced_platform() == "cpu" and x.ndim > batch and 1 < x.shape[-1] < _U16_LIMIT
  )


def _sum_true(xs: Sequence[jax.Array], batch: int, fused: bool) -> jax.Array:
  """[len(xs), *shape[:batch]] int32: the True entries of each same-shaped bool array in
  ``xs``, counted over all but its first ``batch`` axes.

  ``fused``: one variadic reduction for all of ``xs`` (see `count_true_many`); otherwise one
  reduction each. On CPU both count along the last axis in uint16 first (see `count_true`).
  """
  xs = list(xs)
  if len({x.shape for x in xs}) > 1:
    raise ValueError(f"count_true_many: arrays of different shapes {[x.shape for x in xs]}")
  ndim = xs[0].ndim
  rest = tuple(range(batch, ndim))

  def add(a, b):
    return tuple(ai + bi for ai, bi in zip(a, b, strict=True))

  def reduce(ops, dtype, dims):
    if not fused:
      return [jnp.sum(o, axis=dims, dtype=dtype) for o in ops]
    zeros = tuple(jnp.zeros((), dtype) for _ in ops)
    return lax.reduce(tuple(o.astype(dtype) for o in ops), zeros, add, dims)

  if _narrow(xs[0], batch):
    rows = reduce(xs, jnp.uint16, (ndim - 1,))
    return jnp.stack(reduce(rows, jnp.int32, rest[:-1]))
  return jnp.stack(reduce(xs, jnp.int32, rest))


def count_true_many(xs: Sequence[jax.Array]) -> jax.Array:
  """[P] int32: ``count_true`` of each of P same-shaped bool arrays, in one reduction.

  The P counts come from one variadic reduction (on CPU uint16 along the last axis, exact while
  it is shorter than 2**16, then int32 over the rows), which XLA fuses with the compares that
  produce ``xs``: when they are compares of one array (``a >= c_j``), the P counts cost one read
  of ``a``, where P separate counts read it P times (a plain reduction of the stacked arrays is
  slower still on CPU: it materialises the stack). This is what makes a two-bit pass of the
  threshold search cost about as much as a one-bit pass. Under sharding the partitioner
  all-gathers the partial counts (uint16 per row and shard, or int32 per shard) instead of
  all-reducing them; the arrays themselves are never moved.
  """
  return _sum_true(xs, batch=0, fused=True)


def default_radix_bits() -> int:
  """Bits of the threshold decided per pass of `kth_largest_key` on this backend.

  2 on CPU: three candidates counted in one fused variadic reduction (`count_true_many`) make 16
  passes over memory instead of 32, about 3x faster there (three and four bits per pass are
  slower: more compares per element read). 1 elsewhere: the plain bisection, whose sharded form
  is scalar all-reduces only; on GPU/TPU memory bandwidth makes the search cheap either way,
  and the variadic form has not been measured there.
  """
  return 2 if traced_platform() == "cpu" else 1


class _Block(NamedTuple):
  """Keys searched together: one leaf ([...], ``members`` of length 1) or a stack of
  same-shaped leaves ([P, ...]). ``groups``: each member's group."""

  keys: jax.Array
  members: tuple[int, ...]
  groups: tuple[int, ...]

  @property
  def batch(self) -> int:
    """Leading member axes: 0 for a single leaf (its program is that of an unstacked search),
    1 for a stack."""
    return int(len(self.members) > 1)

  def of_members(self, v: jax.Array) -> jax.Array:
    """The per-group vector ``v`` ([G]) at each member's group: [] or [P]."""
    if not self.batch:
      return v[self.groups[0]]
    if len(set(self.groups)) == 1:
      return jnp.broadcast_to(v[self.groups[0]], (len(self.groups),))
    return v[np.asarray(self.groups)]

  def view(self, x: jax.Array) -> jax.Array:
    """Per-member values ([] or [P]) broadcastable against the keys."""
    return x.reshape(x.shape + (1,) * (self.keys.ndim - self.batch))

  def count(self, xs: Sequence[jax.Array], fused: bool) -> jax.Array:
    """[len(xs)] or [len(xs), P] int32: True entries per member of each bool array of the
    keys' shape (see `_sum_true`)."""
    return _sum_true(xs, batch=self.batch, fused=fused)

  def add_to(self, total: jax.Array, x: jax.Array) -> jax.Array:
    """``total`` ([G, ...]) plus each member's ``x`` ([...] or [P, ...]) in its group's row."""
    if not self.batch:
      return total.at[self.groups[0]].add(x)
    if len(set(self.groups)) == 1:
      return total.at[self.groups[0]].add(jnp.sum(x, axis=0))
    return total.at[np.asarray(self.groups)].add(x)

  def index(self) -> jax.Array:
    """int32 of the keys' shape: each member's own row-major flat index."""
    shape = self.keys.shape
    idx = jnp.zeros(shape, jnp.int32)
    stride = 1
    for dim in reversed(range(self.batch, len(shape))):
      idx = idx + lax.broadcasted_iota(jnp.int32, shape, dim) * stride
      stride *= shape[dim]
    return idx

  def member(self, x: jax.Array, p: int) -> jax.Array:
    """Member p's part of an array of the keys' shape."""
    return x[p] if self.batch else x


def _search_blocks(blocks: Sequence[_Block], k: jax.Array, bits: int) -> jax.Array:
  """[G] uint32: the k-th largest key per group over blocks of keys (`kth_largest_key`).

  One loop for all blocks: a pass counts each block's candidates in one reduction (keeping a
  stack's member axis), so its kernels scale with the number of blocks, not of matrices.
  """
  n_groups, n_cand = k.shape[0], 2**bits - 1

  def body(i, t):
    shift = (32 - bits * (i + 1)).astype(jnp.uint32)
    cand = [t | (jnp.uint32(j) << shift) for j in range(1, n_cand + 1)]  # each [G]
    counts = jnp.zeros((n_groups, n_cand), jnp.int32)
    for blk in blocks:
      got = blk.count([blk.keys >= blk.view(blk.of_members(c)) for c in cand], fused=bits > 1)
      counts = blk.add_to(counts, got.T)  # [n_cand] or [P, n_cand] per member
    digit = jnp.sum(counts >= k[:, None], axis=1, dtype=jnp.uint32)
    return t | (digit << shift)

  return lax.fori_loop(0, 32 // bits, body, jnp.zeros(k.shape, jnp.uint32))


def kth_largest_key(
  keys: Sequence[jax.Array], k: jax.Array, group_of=None, bits: int | None = None
) -> jax.Array:
  """The k-th largest key (1-based) per group of leaves, ``bits`` bits of it per pass.

  A pass extends the threshold's known high bits ``t`` by the largest digit ``j`` in
  ``0 .. 2**bits - 1`` with ``count(keys >= t | j << shift) >= k``. Counts fall as ``j`` grows,
  so a pass is ``bits`` steps of a bisection, and all its candidates are counted in one read of
  each leaf (`count_true_many`). All groups share one loop (one pass reads every leaf once),
  which keeps the program small and the number of sequential kernels at ``32 / bits`` however
  many matrices there are.

  Args:
    keys: uint32 arrays from `ordered_key`, any shapes.
    k: [G] (or [] for one group) int32, traced; ``0 <= k[g] <= size of group g``.
    group_of: the group of each leaf (static ints in [0, G)); default: all in group 0.
    bits: 1, 2 or 4; None picks `default_radix_bits()`. The result does not depend on it.

  Returns:
    [G] (or []) uint32: the largest t with ``count(keys >= t) >= k`` (0xFFFFFFFF when k == 0).
  """
  bits = _check_bits(bits)
  k = jnp.asarray(k, jnp.int32)
  scalar = k.ndim == 0
  k = jnp.atleast_1d(k)
  group_of = [0] * len(keys) if group_of is None else list(group_of)
  blocks = [_Block(a, (i,), (g,)) for i, (a, g) in enumerate(zip(keys, group_of, strict=True))]
  t = _search_blocks(blocks, k, bits)
  return t[0] if scalar else t


def _check_bits(bits: int | None) -> int:
  bits = default_radix_bits() if bits is None else int(bits)
  if bits not in (1, 2, 4):
    raise ValueError(f"kth_largest_key: bits={bits} must be 1, 2 or 4")
  return bits


def _whole_ties(blk: _Block, t: jax.Array, take: jax.Array) -> jax.Array:
  """bool of the keys' shape: all of each member's ties ``keys == t`` where it keeps any
  (``take`` > 0), none otherwise: the tie rule when no member keeps only some."""
  return (blk.keys == blk.view(t)) & blk.view(take > 0)


def _first_ties(blk: _Block, t: jax.Array, take: jax.Array) -> jax.Array:
  """bool of the keys' shape: the first ``take`` ([] or [P]) ties ``keys == t`` of each member
  in its row-major order, by a bisection over the member-local row-major index for the
  largest J with ``count(eq & idx < J) < take``: ``eq & idx <= J`` keeps exactly ``take``."""
  eq = blk.keys == blk.view(t)
  nbits = max(1, (int(np.prod(blk.keys.shape[blk.batch:])) - 1).bit_length())
  idx = blk.index()  # built inside a branch: an untied step never materialises it

  def body(i, j):
    cand = j | (jnp.int32(1) << (nbits - 1 - i))
    n = blk.count([eq & (idx < blk.view(cand))], fused=False)[0]
    return jnp.where(n < take, cand, j)

  last = lax.fori_loop(0, nbits, body, jnp.zeros(take.shape, jnp.int32))
  return eq & (idx <= blk.view(last)) & blk.view(take > 0)


def _kept_ties(blk: _Block, t: jax.Array, take: jax.Array, partial: jax.Array) -> jax.Array:
  """bool of the keys' shape: the ties ``keys == t`` that each member keeps, the first
  ``take`` ([] or [P]) in its row-major order.

  Where no member keeps only some of its ties (``partial`` False, the usual case) that is all
  or none of them (`_whole_ties`); otherwise the index bisection of `_first_ties`, inside a
  cond, so that an untied threshold costs no pass.
  """
  return lax.cond(partial, lambda: _first_ties(blk, t, take), lambda: _whole_ties(blk, t, take))


def default_joint_conds() -> bool:
  """Whether the data-dependent branches of a mask computation (the tie rule of each block,
  soft movement's minimum retention of each matrix) sit behind one shared condition.

  False on CPU: one cond per block or matrix, where a conditional is cheap (an earlier design,
  one cond whose branch bisected every block, made the masks of MiniLM's 36 matrices about 3x
  slower on CPU; the shared cond here, with the per-block conds nested in its branch, measured
  0.92-1.02x the per-matrix train step on CPU, docs/results.md). True elsewhere: XLA's GPU
  runtime copies every conditional's predicate to the host and waits for the stream to drain
  before it picks a branch, so per-matrix conds cost a device round trip each (36 per mask
  computation on MiniLM, 72 on BERT-base); with one shared cond an untied step pays one, and a
  step where some block needs its branch runs the per-block conds inside it. With it, local
  top-k uses the shared search loop. The masks are the same.
  """
  return traced_platform() != "cpu"


def _kept_ties_all(
  blocks: Sequence[_Block], ts: Sequence[jax.Array], takes: Sequence[jax.Array],
  partials: Sequence[jax.Array],
) -> list[jax.Array]:
  """`_kept_ties` of every block; with `default_joint_conds` and several blocks, behind one
  cond on whether any block keeps only some of its ties."""
  args = list(zip(blocks, ts, takes, partials, strict=True))
  if len(args) < 2 or not default_joint_conds():
    return [_kept_ties(*a) for a in args]
  return lax.cond(
    jnp.any(jnp.stack(list(partials))),
    lambda: [_kept_ties(*a) for a in args],
    lambda: [_whole_ties(blk, t, take) for blk, t, take, _ in args],
  )


def _blocks_of(leaves: Sequence[jax.Array], stack_key: Sequence[Hashable] | None):
  """Leaf indices per block, in leaf order: leaves with equal ``stack_key`` and shape share one
  (None: one block per leaf)."""
  if stack_key is None:
    return [(i,) for i in range(len(leaves))]
  blocks: dict[tuple, list[int]] = {}
  for i, (a, key) in enumerate(zip(leaves, stack_key, strict=True)):
    blocks.setdefault((key, tuple(a.shape)), []).append(i)
  return [tuple(m) for m in blocks.values()]


def topk_select_groups(
  groups: Sequence[Sequence[jax.Array]], k: jax.Array,
  stack_keys: Sequence[Sequence[Hashable]] | None = None,
) -> list[list[jax.Array]]:
  """Exact top-k per group of arrays (joint over each group), deterministic ties; no gradient.

  Group g gets exactly ``k[g]`` True entries. Every kept score is >= every dropped score of
  its group; among scores equal to the k-th largest, the first in (array order within the
  group, row-major index) order are kept. Local top-k over many matrices is one group per
  matrix; global top-k is one group with all of them.

  With ``stack_keys``, arrays of one shape and one key (of any groups) are stacked into one
  [P, ...] block, and each pass of the search counts a block in one reduction that keeps the
  member axis: the number of kernels per pass is the number of blocks, not of matrices (the
  search off CPU is otherwise bound by launching them). Stacking copies the keys once per call
  (as many bytes as the scores); give differently sharded arrays different keys, or the stack
  moves them between devices. Without, no arrays are concatenated. The masks are the same.

  Args:
    groups: G lists of float arrays (any shapes).
    k: [G] int32, traced is fine; clipped to [0, group size].
    stack_keys: None, or hashables shaped like ``groups`` (one per array).

  Returns:
    G lists of bool arrays, same shapes as the inputs.
  """
  leaves, group_of, sizes = [], [], []
  for g, arrays in enumerate(groups):
    total = 0
    for a in arrays:
      leaves.append(ordered_key(lax.stop_gradient(a)))
      group_of.append(g)
      total += int(a.size)
    if total > _INT32_MAX:
      raise ValueError(f"top-k over {total} elements: at most 2**31 - 1 are supported")
    sizes.append(total)
  n_groups = len(groups)
  blocks = []
  flat_keys = None if stack_keys is None else [key for keys in stack_keys for key in keys]
  for m in _blocks_of(leaves, flat_keys):
    keys = leaves[m[0]] if len(m) == 1 else jnp.stack([leaves[i] for i in m])
    blocks.append(_Block(keys, m, tuple(group_of[i] for i in m)))
  k = jnp.clip(jnp.asarray(k, jnp.int32).reshape(n_groups), 0, jnp.asarray(sizes, jnp.int32))
  t = _search_blocks(blocks, k, _check_bits(None))
  # Per member, the entries above the threshold and those equal to it: in one pass where the
  # search itself uses fused counts (CPU), in two plain counts elsewhere.
  fused = default_radix_bits() > 1
  t_of = [blk.of_members(t) for blk in blocks]  # each [] or [P]
  gt_eq = [blk.count([blk.keys > blk.view(tb), blk.keys == blk.view(tb)], fused)
           for blk, tb in zip(blocks, t_of, strict=True)]  # each [2] or [2, P]
  n_gt = jnp.zeros((n_groups,), jnp.int32)
  n_eq = {}
  for blk, c in zip(blocks, gt_eq, strict=True):
    n_gt = blk.add_to(n_gt, c[0])
    n_eq.update({i: blk.member(c[1], p) for p, i in enumerate(blk.members)})
  quota = k - n_gt  # how many ties at t each group keeps, 0 <= quota <= its ties
  # The quota goes to the ties in leaf order: each leaf keeps all of its ties, none, or (at most
  # one leaf per group) the first `take` in row-major order, found by an index bisection that
  # runs only in a block that needs it: an untied threshold (the usual case) costs no pass.
  given = [jnp.int32(0)] * n_groups
  take = {}
  for i, g in enumerate(group_of):
    take[i] = jnp.clip(quota[g] - given[g], 0, n_eq[i])
    given[g] = given[g] + n_eq[i]
  tks, partials = [], []
  for blk in blocks:
    tks.append(jnp.stack([take[i] for i in blk.members]) if blk.batch else take[blk.members[0]])
    partials.append(jnp.any(jnp.stack([(take[i] > 0) & (take[i] < n_eq[i])
                                       for i in blk.members])))
  ties = _kept_ties_all(blocks, t_of, tks, partials)
  out: list[list[jax.Array]] = [[] for _ in groups]
  for blk, tb, tied in zip(blocks, t_of, ties, strict=True):
    kept = (blk.keys > blk.view(tb)) | tied
    for p, i in enumerate(blk.members):
      out[group_of[i]].append((i, blk.member(kept, p)))
  return [[x for _, x in sorted(g, key=lambda e: e[0])] for g in out]


def topk_select(
  scores: Sequence[jax.Array], k: jax.Array, stack_keys: Sequence[Hashable] | None = None
) -> list[jax.Array]:
  """Exact joint top-k over several arrays (one group); see `topk_select_groups`.

  Args:
    scores: float arrays (any shapes); their order is the tie-breaking leaf order.
    k: [] int32 (traced is fine), ``0 <= k <= total size``.
    stack_keys: None, or one hashable per array (see `topk_select_groups`).

  Returns:
    bool arrays, one per input, exactly ``k`` True in total.
  """
  keys = None if stack_keys is None else [list(stack_keys)]
  return topk_select_groups([list(scores)], jnp.reshape(k, (1,)), keys)[0]


# ----------------------------------------------------------------------------------------------
# Binarizers
# ----------------------------------------------------------------------------------------------


@jax.custom_vjp
def straight_through(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Returns ``mask``; its gradient is passed to ``scores`` unchanged (identity backward).

  Args:
    scores: [...] float, the parameters that receive the gradient.
    mask: [...] float32 hard mask (treated as a constant).

  Returns:
    [...] float32, the value of ``mask``.
  """
  del scores
  return mask


def _ste_fwd(scores, mask):
  return mask, None


def _ste_bwd(_, g):
  return g, None


straight_through.defvjp(_ste_fwd, _ste_bwd)


def topk_mask(scores: jax.Array, level: jax.typing.ArrayLike) -> jax.Array:
  """Local top-k: keep the ``floor(level * size)`` highest scores; straight-through.

  Args:
    scores: [in, out] (any shape) float32.
    level: [] keep fraction in [0, 1], may be traced.

  Returns:
    [in, out] float32 0/1 mask with exactly ``keep_count(level, scores.size)`` ones.
  """
  return local_topk_masks([scores], level)[0]


def global_topk_masks(
  scores: Sequence[jax.Array], level: jax.typing.ArrayLike,
  stack_keys: Sequence[Hashable] | None = None,
) -> list[jax.Array]:
  """Global top-k over all arrays together: ``floor(level * total)`` ones; straight-through.

  Args:
    scores: float32 arrays; their order is the tie-breaking order (callers pass sorted paths).
    level: [] keep fraction in [0, 1], may be traced.
    stack_keys: None, or one hashable per array: same-shaped arrays with equal keys are
      searched as one stacked block (`topk_select_groups`). The masks do not depend on it.

  Returns:
    float32 0/1 masks, one per input.
  """
  scores = list(scores)
  k = keep_count(level, sum(int(s.size) for s in scores))
  hard = topk_select(scores, k, stack_keys)
  return [straight_through(s, h.astype(jnp.float32)) for s, h in zip(scores, hard, strict=True)]


def _use_shared_loop(shared_loop: bool | None) -> bool:
  # One loop for all matrices means 32 / bits sequential passes, not that many per matrix: fewer
  # kernel launches and loop-predicate round trips on GPU/TPU. On CPU, separate loops are faster
  # (XLA's CPU runtime runs independent loops concurrently) and compile faster.
  return traced_platform() != "cpu" if shared_loop is None else shared_loop


def _local_select(
  arrays: list[jax.Array], level, shared_loop: bool | None,
  stack_keys: Sequence[Hashable] | None = None,
) -> list[jax.Array]:
  ks = [keep_count(level, int(a.size)) for a in arrays]
  if stack_keys is not None or _use_shared_loop(shared_loop) or default_joint_conds():
    keys = None if stack_keys is None else [[key] for key in stack_keys]
    return [h[0] for h in topk_select_groups([[a] for a in arrays], jnp.stack(ks), keys)]
  return [topk_select([a], k)[0] for a, k in zip(arrays, ks, strict=True)]


def local_topk_masks(
  scores: Sequence[jax.Array], level: jax.typing.ArrayLike, shared_loop: bool | None = None,
  stack_keys: Sequence[Hashable] | None = None,
) -> list[jax.Array]:
  """`topk_mask` for each array; straight-through.

  Args:
    scores: float32 arrays, any shapes.
    level: [] keep fraction in [0, 1], may be traced.
    shared_loop: search all matrices in one loop (True) or one loop each (False); None picks
      by backend (shared on GPU/TPU, separate on CPU). `default_joint_conds` implies a shared
      loop (its one cond covers the blocks of one search). The masks are identical either way.
    stack_keys: None, or one hashable per array: same-shaped arrays with equal keys are
      searched as one stacked block in the shared loop (`topk_select_groups`; implies
      ``shared_loop``). The masks do not depend on it.

  Returns:
    float32 0/1 masks, ``keep_count(level, size)`` ones in each.
  """
  scores = list(scores)
  hard = _local_select(scores, level, shared_loop, stack_keys)
  return [straight_through(s, h.astype(jnp.float32)) for s, h in zip(scores, hard, strict=True)]


def min_retention_count(size: int, min_retention: float) -> int:
  """Reference minimum kept per matrix: ``int(min_retention * size) + 1`` (0 disables), <= size."""
  if min_retention <= 0:
    return 0
  return min(int(min_retention * size) + 1, size)


def _sigmoid_hard(
  scores: jax.Array, tau: jax.typing.ArrayLike, min_retention: float
) -> tuple[jax.Array, jax.Array, int]:
  """Soft movement's pieces for one array: (float32 scores without gradient, bool
  ``sigmoid(S) > tau``, the minimum-retention count, 0 when the rule is off)."""
  s = lax.stop_gradient(scores).astype(jnp.float32)
  hard = jax.nn.sigmoid(s) > jnp.asarray(tau, jnp.float32)
  return s, hard, min_retention_count(int(s.size), min_retention)


def sigmoid_threshold_mask(
  scores: jax.Array, tau: jax.typing.ArrayLike, min_retention: float = 0.005
) -> jax.Array:
  """Soft movement: ``M = sigmoid(S) > tau`` with the minimum-retention rule; straight-through.

  When fewer than ``int(min_retention * size) + 1`` entries pass, that many top-scored entries
  are kept instead (exact top-k with deterministic ties; the reference's ``S > kthvalue`` can keep
  fewer under ties and keeps nothing for a 1x1 matrix).

  Args:
    scores: [in, out] float32.
    tau: [] threshold on sigmoid(scores), may be traced.
    min_retention: fraction; <= 0 disables the rule.

  Returns:
    [in, out] float32 0/1 mask.
  """
  s, hard, n_min = _sigmoid_hard(scores, tau, min_retention)
  if n_min > 0:
    hard = lax.cond(
      count_true(hard) < n_min,
      lambda: topk_select([s], jnp.int32(n_min))[0],
      lambda: hard,
    )
  return straight_through(scores, hard.astype(jnp.float32))


def sigmoid_threshold_masks(
  scores: Sequence[jax.Array], tau: jax.typing.ArrayLike, min_retention: float = 0.005
) -> list[jax.Array]:
  """`sigmoid_threshold_mask` of each array (one tau for all); straight-through.

  With `default_joint_conds` (off CPU) the minimum-retention rule of all arrays sits behind one
  cond, taken when any array keeps too few: its branch finds every array's top
  ``int(min_retention * size) + 1`` in one shared search and uses it where an array falls
  short. Otherwise each array has its own cond, as in `sigmoid_threshold_mask`. The masks are
  the same.

  Args:
    scores: float32 arrays, any shapes.
    tau: [] threshold on sigmoid(scores), may be traced.
    min_retention: fraction; <= 0 disables the rule.

  Returns:
    float32 0/1 masks, one per input.
  """
  scores = list(scores)
  if len(scores) < 2 or not default_joint_conds():
    return [sigmoid_threshold_mask(s, tau, min_retention) for s in scores]
  ss, hard, n_min = (list(x) for x in zip(
    *(_sigmoid_hard(s, tau, min_retention) for s in scores), strict=True))
  if any(n_min):
    short = [count_true(h) < n if n else jnp.bool_(False) for h, n in zip(hard, n_min, strict=True)]

    def retained():
      top = topk_select_groups([[s] for s in ss], jnp.asarray(n_min, jnp.int32))
      return [jnp.where(sh, t[0], h) for sh, t, h in zip(short, top, hard, strict=True)]

    hard = lax.cond(jnp.any(jnp.stack(short)), retained, lambda: hard)
  return [straight_through(s, h.astype(jnp.float32)) for s, h in zip(scores, hard, strict=True)]


def magnitude_mask(weights: jax.Array, level: jax.typing.ArrayLike) -> jax.Array:
  """Top-k of ``|W|`` per matrix; a constant (no gradient flows through the mask).

  Args:
    weights: [in, out] float.
    level: [] keep fraction in [0, 1], may be traced.

  Returns:
    [in, out] float32 0/1 mask.
  """
  return local_magnitude_masks([weights], level)[0]


def local_magnitude_masks(
  weights: Sequence[jax.Array], level: jax.typing.ArrayLike, shared_loop: bool | None = None,
  stack_keys: Sequence[Hashable] | None = None,
) -> list[jax.Array]:
  """`magnitude_mask` for each array; constants (stop_gradient).

  Args:
    weights: float arrays, any shapes.
    level: [] keep fraction in [0, 1], may be traced.
    shared_loop: as in `local_topk_masks`.
    stack_keys: as in `local_topk_masks`.

  Returns:
    float32 0/1 masks, ``keep_count(level, size)`` ones in each.
  """
  mags = [jnp.abs(lax.stop_gradient(w)) for w in weights]
  return [h.astype(jnp.float32) for h in _local_select(mags, level, shared_loop, stack_keys)]


def global_magnitude_masks(
  weights: Sequence[jax.Array], level: jax.typing.ArrayLike,
  stack_keys: Sequence[Hashable] | None = None,
) -> list[jax.Array]:
  """Top-k of ``|W|`` over all arrays together; constants (stop_gradient).

  Args:
    weights: float arrays; their order is the tie-breaking order.
    level: [] keep fraction in [0, 1], may be traced.
    stack_keys: as in `global_topk_masks`.

  Returns:
    float32 0/1 masks, one per input.
  """
  mags = [jnp.abs(lax.stop_gradient(w)) for w in weights]
  k = keep_count(level, sum(int(w.size) for w in mags))
  return [h.astype(jnp.float32) for h in topk_select(mags, k, stack_keys)]


def l0_mask(scores: jax.Array, rng: jax.Array | None = None) -> jax.Array:
  """Hard-concrete mask (l=-0.1, r=1.1, beta=2/3); ordinary autodiff.

  With ``rng``: ``u ~ U(0,1)`` clamped to [1e-4, 0.9999],
  ``s = sigmoid((log u - log(1-u) + S) / beta)``, ``M = clip(s (r - l) + l, 0, 1)``; one fresh
  draw per call. Without: the deterministic ``clip(sigmoid(S) (r - l) + l, 0, 1)`` (continuous,
  not binary), used for evaluation and export.

  Args:
    scores: [in, out] float32.
    rng: PRNG key for the sample, or None for the deterministic mask.

  Returns:
    [in, out] float32 mask in [0, 1].
  """
  s = scores.astype(jnp.float32)
  if rng is None:
    gate = jax.nn.sigmoid(s)
  else:
    u = jnp.clip(jax.random.uniform(rng, s.shape, jnp.float32), L0_U_MIN, L0_U_MAX)
    gate = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + s) / L0_BETA)
  return jnp.clip(gate * (L0_RIGHT - L0_LEFT) + L0_LEFT, 0.0, 1.0)
