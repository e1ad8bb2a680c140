#!/usr/bin/env bash
# Quality vs cost of the learned optimizer's size: hidden width H and number of momenta M.
#
#   bash benchmarks/lopt_size_tradeoff.sh [OUT_DIR] [OUTER_STEPS] [VARIANT ...]
#   EXTRA="run.seed=1" bash benchmarks/lopt_size_tradeoff.sh runs/tradeoff_seed1 3000
#
# For each variant (default: all below; mlp_small with the variant's hidden sizes and momenta):
# meta-train with the quickstart recipe (same seed and outer steps for all), then `lopt evaluate`
# the exported theta on the `in_distribution` suite against tuned AdamW (300 inner steps, 2 seeds).
# Resumable: a variant whose outputs exist is skipped. The step cost of each variant:
# benchmarks/step_time.py --set hidden_sizes=... momentum_decays=...
# H <= 8 uses the fused step; 16 and 32 the reference (the fused program for 16 does not fit in
# 24 GB when compiled inside a PES truncation).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-runs/lopt_size_tradeoff}
STEPS=${2:-800}
shift $(( $# < 2 ? $# : 2 ))
M3='optimizer.kwargs.momentum_decays=[0.5,0.9,0.99]'
M5='optimizer.kwargs.momentum_decays=[0.1,0.5,0.9,0.99,0.999]'
declare -A VARIANTS=(
  [h4m3]="optimizer.kwargs.hidden_sizes=[4] $M3"
  [h8m3]="optimizer.kwargs.hidden_sizes=[8] $M3"
  [h4m5]="optimizer.kwargs.hidden_sizes=[4] $M5"
  [h8m5]="optimizer.kwargs.hidden_sizes=[8] $M5"
  [h16m5]="optimizer.kwargs.hidden_sizes=[16] $M5 optimizer.kwargs.impl=reference"
  [h32m5]="optimizer.kwargs.hidden_sizes=[32] $M5 optimizer.kwargs.impl=reference"
)
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(h4m3 h8m3 h4m5 h8m5 h16m5 h32m5)
mkdir -p "$OUT"
for NAME in "${NAMES[@]}"; do
  [ -n "${VARIANTS[$NAME]+x}" ] || { echo "unknown variant $NAME; known: ${!VARIANTS[*]}"; exit 2; }
  W=$OUT/$NAME
  if [ ! -f "$W/theta.safetensors" ]; then
    rm -rf "$W"
    # shellcheck disable=SC2086  # the overrides are separate words
    .venv/bin/lopt meta-train configs/quickstart.yaml --workdir "$W" run.num_steps="$STEPS" \
      run.progress=false optimizer.architecture=mlp_small ${VARIANTS[$NAME]} ${EXTRA:-} \
      > "$OUT/$NAME.train.log" 2>&1 || { echo "$NAME meta-training failed: $OUT/$NAME.train.log"; continue; }
  fi
  if [ ! -f "$OUT/eval_$NAME/results.json" ]; then
    .venv/bin/lopt evaluate --optimizer "$W/theta.safetensors" --suite in_distribution \
      --max-steps 300 --seeds 2 --out "$OUT/eval_$NAME" > "$OUT/$NAME.eval.log" 2>&1 \
      || echo "$NAME evaluation failed: $OUT/$NAME.eval.log"
  fi
  echo "== $NAME: ${VARIANTS[$NAME]} ${EXTRA:-}"
  grep -h "eval learned:" "$OUT/$NAME.train.log"
  .venv/bin/python - "$OUT/eval_$NAME/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for task, t in r["tasks"].items():
    ours = next(o for k, o in t["optimizers"].items() if o["kind"] == "learned")
    ref = t["optimizers"][r["reference"]]
    print(f"  {task}: final train {ours['final_train_loss']} ({ours['outcome']}), "
          f"tuned {r['reference']} {ref['final_train_loss']:.4g}")
PY
done
