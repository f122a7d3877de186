"""What a compiled XLA program launches: kernels, host round trips and bytes, from its HLO text.

A static description of an optimised HLO module (`compiled.as_text()`), for comparing train-step
variants on a backend where each kernel launch and each host round trip has a fixed cost (a GPU
at small batch). It walks the entry computation as the runtime would run it once:

- a ``fusion``, ``custom-call`` or other compute instruction is one kernel; its bytes are the
  sizes of its operands plus its result (an upper bound on what it moves: a fused dynamic slice
  reads less than its whole operand);
- a ``while`` with a known trip count (``known_trip_count`` in its backend config) runs its body
  that many times and needs no host round trip; without one, its body and condition are counted
  once and each iteration is a round trip (the predicate is read on the host);
- a ``conditional`` is a round trip (its predicate is read on the host) and runs ONE branch: the
  one with the fewest round trips, then the fewest kernels, is counted (in the masks, the usual
  case: no partially kept ties, enough weights kept); every branch's kernels are listed in
  ``conds``;
- a ``call`` runs its computation inline.

It reads no timings and knows no cost model: kernel counts and bytes are what the
`gpu_program.py` benchmark sets against step times measured on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

# Instructions that launch nothing: views, tuples, constants, control.
NO_KERNEL = frozenset({
  "parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
  "opt-barrier", "add-dependency", "partition-id", "replica-id", "domain",
})
_BYTES = {
  "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
  "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0,
}
_ARRAY = re.compile(r"\b(pred|[subfc]\d+|bf16|token)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) \((.*)\) -> (.*) \{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_OP = re.compile(r"(?:^|[\s)}\]])([a-z][a-z0-9\-]*)\(")


def shape_bytes(shape: str) -> int:
  """Bytes of every array in an HLO shape string (a tuple's elements summed).

  >>> shape_bytes("(f32[2,3]{1,0}, pred[4]{0}, s32[])")
  32
  """
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _BYTES[dtype]
  return total


@dataclasses.dataclass
class Instruction:
  name: str
  op: str
  shape: str  # the result's shape string
  operands: list[str]  # operand instruction names
  attrs: str  # everything after the operand list

  def called(self, key: str) -> list[str]:
    """Computations named by attribute ``key`` (``calls``, ``body``, ``branch_computations``...)."""
    m = re.search(rf"\b{key}=(\{{[^}}]*\}}|%[\w.\-]+)", self.attrs)
    return [] if m is None else re.findall(r"%([\w.\-]+)", m.group(1))


@dataclasses.dataclass
class Computation:
  name: str
  param_bytes: int  # sum of the header's parameter sizes
  result_bytes: int
  instructions: list[Instruction]

  def shapes(self) -> dict[str, str]:
    return {i.name: i.shape for i in self.instructions}


def _split_instruction(name: str, rest: str) -> Instruction | None:
  """``rest`` is what follows ``%name = ``: a shape, the opcode, ``(operands)``, attributes."""
  m = _OP.search(rest)
  if m is None:
    return None
  op, start = m.group(1), m.end()
  depth, end = 1, start
  while end < len(rest) and depth:
    depth += {"(": 1, ")": -1}.get(rest[end], 0)
    end += 1
  operands = re.findall(r"%([\w.\-]+)", rest[start:end - 1])
  return Instruction(name, op, rest[: m.start(1)].strip(), operands, rest[end:])


def parse(text: str) -> tuple[dict[str, Computation], str]:
  """Computations of an HLO module's text by name, and the entry computation's name."""
  comps: dict[str, Computation] = {}
  entry, current = None, None
  for line in text.splitlines():
    head = _HEADER.match(line)
    if head:
      params, result = head.group(3), head.group(4)
      current = Computation(head.group(2), shape_bytes(params), shape_bytes(result), [])
      comps[current.name] = current
      if head.group(1):
        entry = current.name
      continue
    if line.startswith("}"):
      current = None
      continue
    m = _INSTR.match(line) if current is not None else None
    if m:
      instr = _split_instruction(m.group(1), m.group(2))
      if instr is not None:
        current.instructions.append(instr)
  if entry is None:
    raise ValueError("no ENTRY computation in this HLO text")
  return comps, entry


@dataclasses.dataclass
class Launches:
  """What one run of a computation launches (see the module docstring for the rules)."""

  kernels: int = 0
  bytes: int = 0
  host_syncs: int = 0
  loops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  conds: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def add(self, other: Launches, times: int = 1) -> None:
    self.kernels += other.kernels * times
    self.bytes += other.bytes * times
    self.host_syncs += other.host_syncs * times
    self.loops += [dict(loop, runs=loop["runs"] * times) for loop in other.loops]
    self.conds += [dict(cond, runs=cond["runs"] * times) for cond in other.conds]


def _trip_count(instr: Instruction) -> int | None:
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.attrs)
  return None if m is None else int(m.group(1))


def _kernel_bytes(instr: Instruction, comps: dict[str, Computation], shapes: dict[str, str]) -> int:
  called = instr.called("calls")
  if instr.op == "fusion" and called and called[0] in comps:
    c = comps[called[0]]
    return c.param_bytes + c.result_bytes
  return shape_bytes(instr.shape) + sum(shape_bytes(shapes.get(o, "")) for o in instr.operands)


def launches(comps: dict[str, Computation], name: str) -> Launches:
  """`Launches` of one run of computation ``name`` (recursing into loops, conds and calls)."""
  comp = comps[name]
  shapes = comp.shapes()
  out = Launches()
  for instr in comp.instructions:
    if instr.op in NO_KERNEL:
      continue
    if instr.op == "while":
      trip = _trip_count(instr)
      body = launches(comps, instr.called("body")[0])
      runs = 1 if trip is None else trip
      out.add(body, runs)
      if trip is None:
        out.add(launches(comps, instr.called("condition")[0]))
        out.host_syncs += 1
      out.loops.append(dict(name=instr.name, trip_count=trip, body_kernels=body.kernels, runs=1))
    elif instr.op == "conditional":
      branches = instr.called("branch_computations") or (
        instr.called("true_computation") + instr.called("false_computation"))
      options = [launches(comps, b) for b in branches]
      taken = min(options, key=lambda b: (b.host_syncs, b.kernels))
      out.add(taken)
      out.host_syncs += 1
      out.conds.append(dict(name=instr.name, branch_kernels=[b.kernels for b in options], runs=1))
    elif instr.op == "call":
      for c in instr.called("to_apply") or instr.called("calls"):
        out.add(launches(comps, c))
    else:
      out.kernels += 1
      out.bytes += _kernel_bytes(instr, comps, shapes)
  return out


def describe(text: str) -> dict[str, Any]:
  """A JSON-able summary of one run of an HLO module's entry computation.

  Returns:
    kernels, bytes (operands + results of every kernel), host_syncs (conditionals and loops of
    unknown trip count, per run), loops (name, trip_count, body_kernels, runs), conds (name,
    branch_kernels, runs), and op_counts (the entry computation's instructions by opcode).
  """
  comps, entry = parse(text)
  run = launches(comps, entry)
  ops: dict[str, int] = {}
  for instr in comps[entry].instructions:
    ops[instr.op] = ops.get(instr.op, 0) + 1
  return dict(kernels=run.kernels, bytes=run.bytes, host_syncs=run.host_syncs, loops=run.loops,
              conds=run.conds, op_counts=dict(sorted(ops.items())))


if __name__ == "__main__":
  import sys

  print(json.dumps(describe(open(sys.argv[1]).read()), indent=1))
