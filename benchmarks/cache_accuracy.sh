#!/usr/bin/env bash
# Accuracy of BINGO (and its anchor query alone) on the teacher cache against the on-line teacher, at equal
# epochs, 3 seeds, for V = 1, 4 and 16 cached views; against MoCo-v2 at equal wall time; and BINGO and MoCo-v2
# under bf16 autocast.
#   benchmarks/cache_accuracy.sh runs/demo            # the demo's teacher and bags (after `make demo`)
# Writes OUT (default runs/cache-accuracy)/results.md: kNN and linear, mean and spread over seeds, wall times.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${1:?usage: benchmarks/cache_accuracy.sh DEMO_RUN_FOLDER [OUT]}
OUT=${2:-runs/cache-accuracy}
BINGO=${BINGO:-.venv/bin/bingo}
TEACHER=$DEMO/teacher/teacher.safetensors
BAGS=$DEMO/bags/bags.npz
quiet=(--set trainer.progress_bar=false)
for views in 1 4 16; do
  [ -f "$OUT/cache-v$views/outputs.npy" ] || \
    "$BINGO" cache --teacher "$TEACHER" --views $views --out "$OUT/cache-v$views" "${quiet[@]}"
done
mkdir -p "$OUT"
cat > "$OUT/study.yaml" <<YAML
compare:
  runs:
    bingo: {}
    bingo-cache-v1: {method: bingo, set: [distill.teacher_cache=$OUT/cache-v1/outputs.npy]}
    bingo-cache-v4: {method: bingo, set: [distill.teacher_cache=$OUT/cache-v4/outputs.npy]}
    bingo-cache-v16: {method: bingo, set: [distill.teacher_cache=$OUT/cache-v16/outputs.npy]}
    anchor-cache-v16: {method: bingo, set: [distill.teacher_cache=$OUT/cache-v16/outputs.npy,
                                            distill.bingo.cutmix=false, distill.bingo.symmetric=false]}
    anchor-cache-v16-3ep: {method: bingo, set: [distill.teacher_cache=$OUT/cache-v16/outputs.npy,
                                                distill.bingo.cutmix=false, distill.bingo.symmetric=false,
                                                distill.optim.epochs=3]}
    moco: {}
    bingo-bf16: {method: bingo, set: [trainer.precision=bf16-mixed]}
    moco-bf16: {method: moco, set: [trainer.precision=bf16-mixed]}
YAML
"$BINGO" compare --config "$OUT/study.yaml" --seeds 0 1 2 --teacher "$TEACHER" --bags "$BAGS" \
  --out "$OUT/compare" --resume "${quiet[@]}"
