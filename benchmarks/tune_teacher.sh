#!/usr/bin/env bash
# Pretrain a demo teacher with some overrides and print its kNN accuracy on the Fashion-MNIST test set.
#   benchmarks/tune_teacher.sh NAME [KEY=VALUE ...]      e.g. benchmarks/tune_teacher.sh t01 pretrain.moco.temperature=0.1
# Writes runs/tune/NAME/ and appends one line to runs/tune/summary.txt. docs/demo.md lists what was tried.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
out=runs/tune/$name
rm -rf "$out"; mkdir -p runs/tune
sets=(--set trainer.progress_bar=false); for kv in "$@"; do sets+=(--set "$kv"); done
start=$(date +%s)
.venv/bin/bingo pretrain --out "$out" "${sets[@]}" > "$out.log" 2>&1
trained=$(( $(date +%s) - start ))
.venv/bin/bingo eval knn --model "$out/teacher.safetensors" --out "$out/eval" "${sets[@]}" >> "$out.log" 2>&1
.venv/bin/python - "$name" "$trained" "$out/eval/results.json" "$*" >> runs/tune/summary.txt <<'PY'
import json, sys
name, seconds, path, overrides = sys.argv[1:]
result = json.load(open(path))
knn = " ".join(f"kNN@{k}={v['top1']:.1f}" for k, v in result["knn"].items())
print(f"{name}\ttrain {seconds}s\t{knn}\tpurity={result['bag_purity']:.3f}\t{overrides}")
PY
tail -1 runs/tune/summary.txt
