#!/bin/bash
# Paired accuracy check of two versions of bingo: the demo's MoCo-v2 student (no teacher needed)
# trained at each seed on each version, then kNN-evaluated. Usage (from the repository root):
#   git worktree add /tmp/base COMMIT
#   benchmarks/ab_moco.sh /tmp/base/src "0 1 2 3 4" > ab.log
# Prints one line per (version, seed): "base|head SEED {k: {top1, top5}}".
set -euo pipefail
BASE_SRC=$1 SEEDS=${2:-"0 1 2 3 4"} OUT=${OUT:-/tmp/ab}
for side in base head; do
  if [ "$side" = base ]; then export PYTHONPATH=$BASE_SRC; else export PYTHONPATH=$PWD/src; fi
  for seed in $SEEDS; do
    run=$OUT/$side-moco-$seed
    rm -rf "$run" "$run-eval"
    .venv/bin/python -m bingo distill --method moco --seed "$seed" --out "$run" \
        --set trainer.progress_bar=false > /dev/null 2>&1
    .venv/bin/python -m bingo eval knn --model "$run/student.safetensors" --out "$run-eval" \
        --set trainer.progress_bar=false 2>/dev/null |
      python3 -c "import json,sys; r=list(json.load(sys.stdin)['rows'].values())[0]; print('$side', $seed, r['knn'])"
  done
done
