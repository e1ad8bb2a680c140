#!/usr/bin/env bash
# Quality vs cost of the learned optimizer's hidden size (one hidden layer of width H).
#
#   bash benchmarks/hidden_size_tradeoff.sh [OUT_DIR] [OUTER_STEPS]
#
# For each H in 4 8 16 32: meta-train with the quickstart recipe (same seed and outer steps for
# all), then `lopt evaluate` the exported theta on the `in_distribution` suite against tuned AdamW
# (300 inner steps, 2 seeds). H <= 8 uses the fused step; 16 and 32 the reference (the fused
# program for 16 does not fit in 24 GB when compiled inside a PES truncation). Resumable: an H
# whose outputs exist is skipped. Step cost: benchmarks/step_time.py.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-runs/hidden_size_tradeoff}
STEPS=${2:-800}
mkdir -p "$OUT"
for H in 4 8 16 32; do
  IMPL=fused; [ "$H" -gt 8 ] && IMPL=reference
  W=$OUT/h$H
  if [ ! -f "$W/theta.safetensors" ]; then
    rm -rf "$W"
    .venv/bin/lopt meta-train configs/quickstart.yaml --workdir "$W" run.num_steps="$STEPS" \
      "optimizer.kwargs.hidden_sizes=[$H]" optimizer.kwargs.impl=$IMPL run.progress=false \
      > "$OUT/h$H.train.log" 2>&1 || { echo "H=$H meta-training failed: $OUT/h$H.train.log"; continue; }
  fi
  if [ ! -f "$OUT/eval_h$H/results.json" ]; then
    .venv/bin/lopt evaluate --optimizer "$W/theta.safetensors" --suite in_distribution \
      --max-steps 300 --seeds 2 --out "$OUT/eval_h$H" > "$OUT/h$H.eval.log" 2>&1 \
      || echo "H=$H evaluation failed: $OUT/h$H.eval.log"
  fi
  grep -h "eval learned" "$OUT/h$H.train.log"
  grep -h "theta.safe" "$OUT/h$H.eval.log" | tail -1
done
