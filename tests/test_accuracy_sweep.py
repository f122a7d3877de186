"""The accuracy sweep's pure parts: every cell's train.py overrides name real config fields, and
the table's interpolated L0 / soft-movement cells agree with numpy on random points; and the record
a cell writes, with train.py replaced. No training."""

import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from _bench import load_benchmark  # noqa: E402

from configs import default  # noqa: E402


@pytest.fixture(scope="module")
def sweep():
  return load_benchmark("accuracy_sweep")


CELLS = [("dense", None, False)] + [(m, p, d) for m, p in [("magnitude", 0.1), ("topk", 0.03),
                                                            ("soft", 500.0), ("l0", 100.0)]
                                    for d in (False, True)]


@pytest.mark.parametrize("task", ["sst2", "trec", "mrpc"])
@pytest.mark.parametrize("method,param,distil", CELLS)
def test_overrides_set_existing_config_fields_with_their_types(sweep, task, method, param,
                                                               distil, tmp_path):
  cfg = default.get_config()
  flags = sweep.overrides(task, method, param, distil, 0, 1000, 32, tmp_path)
  for flag in flags:
    key, value = flag.removeprefix("--config.").split("=", 1)
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
      node = node[part]
    assert leaf in node, f"{flag}: no config field {key}"
    # The value parses as the field's type (what ml_collections' flag parser will demand).
    current = node[leaf]
    if isinstance(current, bool):
      assert value in ("True", "False"), flag
    elif isinstance(current, (int, float)):
      float(value)
  got = dict(f.removeprefix("--config.").split("=", 1) for f in flags)
  expected_method = {"dense": "none", "magnitude": "magnitude", "topk": "topk",
                     "soft": "sigmoid_threshold", "l0": "l0"}[method]
  assert got["pruning.method"] == expected_method
  assert ("distill.teacher" in got) == distil
  if distil:
    assert got["distill.teacher"] == str(tmp_path / task / "dense-s0" / "export")


def test_interpolation_matches_numpy_inside_and_flags_extrapolation(sweep):
  rng = np.random.default_rng(0)
  for _ in range(200):
    xs = np.sort(rng.choice(np.linspace(0.5, 80, 400), size=rng.integers(2, 6), replace=False))
    ys = rng.uniform(40, 95, size=xs.size)
    points = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
    rng.shuffle(points)
    target = float(rng.uniform(xs[0], xs[-1]))
    value, flag = sweep.interpolate(points, target)
    assert flag == ""
    np.testing.assert_allclose(value, np.interp(target, xs, ys), rtol=1e-12)
  value, flag = sweep.interpolate([(1.0, 50.0), (2.0, 60.0), (4.0, 70.0)], 5.0)
  assert flag == " (extrapolated)"
  np.testing.assert_allclose(value, 70.0 + 5.0 * 1.0)
  value, flag = sweep.interpolate([(1.0, 50.0), (2.0, 60.0), (4.0, 70.0)], 0.2)
  np.testing.assert_allclose(value, 50.0 - 10.0 * 0.8)
  # Two runs close together say nothing far away (an SST-2 L0 seed: 1.45% dead, 2.01% alive).
  assert sweep.interpolate([(1.45, 50.9), (2.01, 80.7)], 10.0) is None
  assert sweep.interpolate([(1.45, 50.9), (2.01, 80.7)], 3.0) is None
  assert sweep.interpolate([(1.0, 60.0), (3.0, 95.0)], 4.0) is None  # would pass 100%
  assert sweep.interpolate([(3.0, 50.0)], 3.0) is None


def _record(method, param, value, remaining, seed=0, distil=False, tag=""):
  return {"task": "trec", "method": method, "param": param, "distil": distil, "seed": seed,
          "tag": tag, "steps": 1000, "metric": "accuracy", "value": value,
          "remaining_paper": remaining}


def test_table_cells_average_seeds_interpolate_lambdas_and_leave_out_variants(sweep):
  records = [
    _record("dense", None, 0.95, 1.0),
    _record("topk", 0.1, 0.88, 0.1025), _record("topk", 0.1, 0.90, 0.1025, seed=1),
    _record("topk", 0.1, 0.10, 0.1025, tag="broken"),  # a variant: listed, not in the cell
    _record("l0", 100.0, 0.92, 0.0855), _record("l0", 250.0, 0.897, 0.0166),
    _record("l0", 250.0, 0.50, 0.0166, seed=1),  # one lambda of seed 1: not interpolable
    _record("soft", 500.0, 0.90, 0.07, seed=2), _record("soft", 2000.0, 0.92, 0.02, seed=2),
    _record("soft", 500.0, 0.86, 0.07, seed=3), _record("soft", 2000.0, 0.90, 0.02, seed=3),
    _record("soft", 500.0, 0.91, 0.0697, distil=True),
  ]
  text = sweep.table(records)
  rows = {}  # the first (averaged) table only; the per-seed rows repeat its keys below it
  for line in text.splitlines():
    if line.startswith("| 10%") or line.startswith("| 3%"):
      rows.setdefault(tuple(c.strip() for c in line.strip("|").split("|")[:2]), line)
  cells = {k: [c.strip() for c in v.strip("|").split("|")[2:]] for k, v in rows.items()}
  mag, l0, mvp, soft = cells[("10%", "no")]
  assert (mag, mvp) == ("-", "89.0 ± 1.0 (n=2)")
  assert soft.endswith("(n=2) (extrapolated)")  # 10% lies beyond both seeds' runs
  want_l0_3 = np.interp(3.0, [1.66, 8.55], [89.7, 92.0])
  assert cells[("3%", "no")][1] == f"{want_l0_3:.1f} (n=1)"
  soft_3 = [np.interp(3.0, [2.0, 7.0], [92.0, 90.0]), np.interp(3.0, [2.0, 7.0], [90.0, 86.0])]
  assert cells[("3%", "no")][3] == (f"{np.mean(soft_3):.1f} ± {np.ptp(soft_3) / 2:.1f} (n=2)")
  assert l0.endswith("(extrapolated)")
  assert cells[("10%", "yes")][3] == "-"  # one lambda cannot be interpolated
  assert "topk-0.1-broken-s0" in text and "Dense fine-tuning (teacher): 95.0 (n=1)." in text


def test_plot_lines_are_per_seed_and_distillation_apart(sweep):
  records = [
    _record("dense", None, 0.95, 1.0),
    _record("soft", 500.0, 0.91, 0.0697), _record("soft", 2000.0, 0.914, 0.0156),
    _record("soft", 2000.0, 0.902, 0.0149, seed=1),
    _record("soft", 2000.0, 0.891, 0.0287, distil=True),
    _record("topk", 0.1, 0.10, 0.1025, tag="broken"),  # a variant: not plotted
  ]
  series = sweep.plot_series(records, "trec")
  assert [(s["method"], s["distil"], s["seed"]) for s in series] == [
    ("soft", False, 0), ("soft", False, 1), ("soft", True, 0)]
  seed0, seed1, distilled = series
  # Seed 1's point (1.49%) is not joined into seed 0's line, though it sorts between its points.
  np.testing.assert_allclose(seed0["pts"], [(1.56, 91.4), (6.97, 91.0)])
  np.testing.assert_allclose(seed1["pts"], [(1.49, 90.2)])
  assert (seed0["label"], seed1["label"], distilled["label"]) == (
    "soft MvP", "", "soft MvP + distil")


@pytest.mark.parametrize("checkpoints,want", [((), None), (("200", "400", "400.orbax-tmp"), 400)])
def test_run_cell_records_the_step_a_stopped_run_resumed_from(sweep, monkeypatch, tmp_path,
                                                              checkpoints, want):
  # train.py itself is replaced: the record's fields come from its eval_results.json and from
  # the workdir as it was before the run, which is what this checks.
  monkeypatch.setattr(sweep, "RESULTS", tmp_path / "results")
  runs = tmp_path / "runs"
  workdir = runs / "trec" / sweep.run_name("magnitude", 0.1, False, 0)
  for name in checkpoints:
    (workdir / "checkpoints" / name).mkdir(parents=True)
  eval_results = {"metrics": {"accuracy": 0.5}, "remaining_weights_paper": 0.1025,
                  "remaining_weights_plain": 0.1}

  def fake_train(cmd, **kwargs):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "eval_results.json").write_text(sweep.json.dumps(eval_results))
    return sweep.subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(sweep.subprocess, "run", fake_train)
  record = sweep.run_cell("trec", "magnitude", 0.1, False, 0, 1000, 32, runs)
  assert record["resumed_from_step"] == want
  assert record["value"] == 0.5 and record["remaining_paper"] == 0.1025
  stored = sweep.json.loads((tmp_path / "results" / "trec" / "magnitude-0.1-s0.json").read_text())
  assert stored == record


def test_per_seed_rows_and_distillation_gain_pair_runs_of_the_same_seed(sweep):
  records = [
    _record("magnitude", 0.1, 0.83, 0.1025), _record("magnitude", 0.1, 0.82, 0.1025, seed=1),
    _record("magnitude", 0.1, 0.84, 0.1025, distil=True),
    _record("magnitude", 0.1, 0.80, 0.1025, seed=1, distil=True),
    _record("magnitude", 0.1, 0.99, 0.1025, seed=2, distil=True),  # no undistilled seed 2
    _record("l0", 25.0, 0.92, 0.35), _record("l0", 100.0, 0.90, 0.08),
    _record("l0", 100.0, 0.91, 0.15, distil=True), _record("l0", 250.0, 0.89, 0.04, distil=True),
  ]
  rows = {}
  for line in sweep.table(records).splitlines():
    parts = [c.strip() for c in line.strip("|").split("|")]
    if parts[0] in ("10%", "3%"):
      rows.setdefault((parts[0], parts[1]), []).append(parts[2:])
  assert rows[("10%", "no")][1][0] == "s0 83.0, s1 82.0"
  assert rows[("10%", "yes")][1][0] == "s0 84.0, s1 80.0, s2 99.0"
  assert rows[("10%", "gain")][0][0] == "s0 +1.0, s1 -2.0"  # seed 2 has nothing to pair with
  l0_on = np.interp(10.0, [4.0, 15.0], [89.0, 91.0])
  l0_off = np.interp(10.0, [8.0, 35.0], [90.0, 92.0])
  assert rows[("10%", "gain")][0][1] == f"s0 {l0_on - l0_off:+.1f}"
  l0_on_3 = 89.0 + (91.0 - 89.0) * (3.0 - 4.0) / (15.0 - 4.0)  # extrapolated below 4%
  assert rows[("3%", "yes")][1][1] == f"s0 {l0_on_3:.1f}*"
  l0_off_3 = 90.0 + (92.0 - 90.0) * (3.0 - 8.0) / (35.0 - 8.0)
  assert rows[("3%", "no")][1][1] == f"s0 {l0_off_3:.1f}*"
  assert rows[("3%", "gain")][0][1:] == [f"s0 {l0_on_3 - l0_off_3:+.1f}", "-", "-"]
  # One run's lambda alone cannot be interpolated: the seed drops out of the per-seed row too.
  rows_one = [line for line in sweep.table(records[:5] + records[6:7]).splitlines()
              if line.startswith("| 10% | no |")]
  assert rows_one[1].split("|")[4].strip() == "-"
