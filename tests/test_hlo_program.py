"""benchmarks/hlo_program.py: what a compiled program launches, on hand-written and compiled HLO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tests._bench import load_benchmark

hlo = load_benchmark("hlo_program")

# Every rule at once: an entry fusion, a custom call, a loop with a known trip count, one
# without, a conditional whose branches differ (one nests another conditional), and a call.
MODULE = """HloModule m

%fused_a (p0: f32[16,4], p1: f32[4]) -> f32[16,4] {
  %p0 = f32[16,4]{1,0} parameter(0)
  ROOT %r = f32[16,4]{1,0} add(%p0, %p0)
}

%fused_b (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  ROOT %r = f32[4]{0} negate(%p0)
}

%body_known (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %g = f32[4]{0} get-tuple-element(%t), index=1
  %f1 = f32[4]{0} fusion(%g), kind=kLoop, calls=%fused_b
  %f2 = f32[4]{0} fusion(%f1), kind=kLoop, calls=%fused_b
  %i = s32[] get-tuple-element(%t), index=0
  ROOT %o = (s32[], f32[4]{0}) tuple(%i, %f2)
}

%cond_any (t: (s32[], f32[4])) -> pred[] {
  %t = (s32[], f32[4]{0}) parameter(0)
  %g = f32[4]{0} get-tuple-element(%t), index=1
  ROOT %c = pred[] fusion(%g), kind=kLoop, calls=%fused_b
}

%body_unknown (t: (s32[], f32[4])) -> (s32[], f32[4]) {
  %t = (s32[], f32[4]{0}) parameter(0)
  %g = f32[4]{0} get-tuple-element(%t), index=1
  %f = f32[4]{0} fusion(%g), kind=kLoop, calls=%fused_b
  %i = s32[] get-tuple-element(%t), index=0
  ROOT %o = (s32[], f32[4]{0}) tuple(%i, %f)
}

%rare (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %p = pred[] constant(false)
  %y = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_b
  ROOT %z = f32[4]{0} conditional(%p, %y, %y), true_computation=%usual, false_computation=%usual
}

%usual (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %a = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_b
  %b = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_b
  ROOT %c = f32[4]{0} fusion(%b), kind=kLoop, calls=%fused_b
}

%helper (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  ROOT %y = f32[4]{0} copy(%x)
}

ENTRY %main (a: f32[16,4], v: f32[4], p: pred[]) -> f32[4] {
  %a = f32[16,4]{1,0} parameter(0)
  %v = f32[4]{0} parameter(1)
  %p = pred[] parameter(2)
  %f = f32[16,4]{1,0} fusion(%a, %v), kind=kLoop, calls=%fused_a
  %g = f32[16,4]{1,0} custom-call(%f, %f), custom_call_target="__cublas$gemm"
  %zero = s32[] constant(0)
  %t = (s32[], f32[4]{0}) tuple(%zero, %v)
  %w1 = (s32[], f32[4]{0}) while(%t), condition=%cond_any, body=%body_known, @KNOWN@
  %w2 = (s32[], f32[4]{0}) while(%w1), condition=%cond_any, body=%body_unknown
  %x = f32[4]{0} get-tuple-element(%w2), index=1
  %c = f32[4]{0} conditional(%p, %x, %x), true_computation=%rare, false_computation=%usual
  ROOT %h = f32[4]{0} call(%c), to_apply=%helper
}
""".replace("@KNOWN@", 'backend_config={"known_trip_count":{"n":"5"}}')


def test_shape_bytes_sums_tuples_and_scalars():
  assert hlo.shape_bytes("(f32[2,3]{1,0}, pred[4]{0}, s32[])") == 24 + 4 + 4
  assert hlo.shape_bytes("bf16[8]") == 16
  assert hlo.shape_bytes("token[]") == 0


def test_describe_counts_each_rule_on_a_hand_written_module():
  d = hlo.describe(MODULE)
  # fusion + custom call + 5 x 2 (known loop) + 1 body + 1 condition (unknown loop, counted
  # once) + 3 (the usual branch: no nested conditional, though it launches more) + 1 copy.
  assert d["kernels"] == 1 + 1 + 10 + 2 + 3 + 1
  assert d["host_syncs"] == 1 + 1  # the unknown loop's predicate, the conditional's
  assert [(lp["trip_count"], lp["body_kernels"]) for lp in d["loops"]] == [(5, 2), (None, 1)]
  assert d["conds"] == [dict(name="c", branch_kernels=[4, 3], runs=1)]
  fused_a = 16 * 4 * 4 + 4 * 4 + 16 * 4 * 4  # the fused computation's params and result
  gemm = 3 * 16 * 4 * 4  # operands and result from the computation's own shapes
  small = 2 * 4 * 4  # every fused_b kernel (the condition's too) and the copy: 4 in, 4 out
  assert d["bytes"] == fused_a + gemm + small * (10 + 1 + 1 + 3 + 1)
  assert d["op_counts"]["while"] == 2 and d["op_counts"]["parameter"] == 3


def test_describe_rejects_text_without_an_entry():
  with pytest.raises(ValueError, match="no ENTRY"):
    hlo.describe(MODULE.replace("ENTRY ", ""))


def _compiled_text(trips: int, with_cond: bool) -> str:
  def f(x, p):
    x = lax.fori_loop(0, trips, lambda i, y: jnp.sin(y) * 2.0 + i, x)
    if with_cond:
      x = lax.cond(p, lambda y: jnp.cos(y) + 1.0, lambda y: y * 3.0, x)
    return x

  x = jnp.ones((64, 64))
  return jax.jit(f).lower(x, True).compile().as_text()


def test_describe_on_compiled_programs_scales_loops_by_their_trip_count():
  # XLA annotates a fori_loop's trip count: twice the trips launch the body's kernels twice as
  # often, with no host round trip; a cond adds one round trip.
  d5, d10 = (hlo.describe(_compiled_text(t, False)) for t in (5, 10))
  assert [lp["trip_count"] for lp in d5["loops"]] == [5]
  body = d5["loops"][0]["body_kernels"]
  assert body >= 1
  assert d10["kernels"] - d5["kernels"] == 5 * body
  assert d5["host_syncs"] == 0
  with_cond = hlo.describe(_compiled_text(5, True))
  assert with_cond["host_syncs"] == 1 and len(with_cond["conds"]) == 1
  assert with_cond["kernels"] > d5["kernels"]


def test_gpu_program_traces_masks_for_a_gpu_in_current_and_older_code():
  gpu_program = load_benchmark("gpu_program")
  from mvp_jax import masks

  with gpu_program._traced_for_gpu(masks):
    assert masks.traced_platform() == "gpu" and masks.default_radix_bits() == 1
  assert masks.traced_platform() == "cpu"
  # Code from before `masks.target_platform` read `jax.default_backend()` in its own namespace.
  import types

  older = types.SimpleNamespace(jax=jax)
  with gpu_program._traced_for_gpu(older):
    assert older.jax.default_backend() == "gpu" and older.jax.numpy is jnp
  assert older.jax is jax and jax.default_backend() == "cpu"


def test_gpu_program_rejects_unknown_models():
  gpu_program = load_benchmark("gpu_program")
  args = gpu_program.parse_args(["--models", "minilm", "--variants", "dense,l0"])
  assert (args.models, args.variants) == (["minilm"], ["dense", "l0"])
  with pytest.raises(SystemExit):
    gpu_program.parse_args(["--models", "gpt2"])


def _program(kernels, gb, syncs=0, peak=100 * 2**20):
  return dict(kernels=kernels, bytes=int(gb * 1e9), host_syncs=syncs, conds=[],
              loops=[dict(trip_count=32, body_kernels=kernels // 64, runs=1)] if syncs else [],
              memory=dict(peak=peak))


def test_launch_cost_fit_recovers_known_costs_and_renders_estimates():
  report = load_benchmark("report")
  rng = np.random.default_rng(0)
  base, per_kernel_us, per_gb = {"a": 2.0, "b": 5.0}, 1.5, 0.8
  programs, measured = {}, {}
  for m in base:
    for i in range(5):
      k, gb = int(rng.integers(500, 6000)), float(rng.uniform(3, 30))
      programs.setdefault(m, {})[f"v{i}"] = _program(k, gb)
      measured.setdefault(m, {})[f"v{i}"] = base[m] + per_kernel_us / 1000 * k + per_gb * gb
  measured["a"]["untimed"] = 1.0  # no program: left out
  fit = report.fit_launch_costs(programs, measured)
  assert fit["us_per_kernel"] == pytest.approx(per_kernel_us, rel=1e-6)
  assert fit["ms_per_gb"] == pytest.approx(per_gb, rel=1e-6)
  assert fit["base_ms"] == pytest.approx(base, rel=1e-6)
  assert len(fit["points"]) == 10 and all(t == pytest.approx(f) for *_, t, f in fit["points"])
  # Too few points for four unknowns and two degrees of freedom: no fit.
  assert report.fit_launch_costs({"a": programs["a"]}, {"a": dict(list(measured["a"].items())[:4])}
                                 ) is None
  env = dict(date="d", jax="0.10.2", cuda_plugin="p", device="H100", commit="abc")
  current = {"environment": env, "models": {"a": {"batch_shape": [32, 64], "variants": {
    "dense": _program(1000, 5.0), "topk_local": _program(3000, 7.0, syncs=1, peak=150 * 2**20)}}}}
  timed = {"environment": env, "models": {m: {"variants": v} for m, v in programs.items()}}
  accel = {"device": "GPU", "date": "d", "models": {m: {"variants": {
    v: {"median_s": t / 1000} for v, t in mv.items()}} for m, mv in measured.items()}}
  text = report.render_gpu_program(dict(current=current, timed=timed, measured=accel))
  dense_ms = base["a"] + per_kernel_us + per_gb * 5.0
  topk_ms = base["a"] + 3 * per_kernel_us + per_gb * 7.0
  row = next(line for line in text.splitlines() if line.startswith("| `topk_local`"))
  assert f"| {topk_ms:.1f} | {report._ratio(topk_ms / dense_ms)} |" in row
  assert "| 150 | 1.50x |" in row and "| 32x46 |" in row
  assert f"{per_kernel_us:.2f} us per kernel + {per_gb:.2f} ms per GB" in text
