#!/usr/bin/env bash
# The bag-recall benchmark of docs/bags.md on its three feature sets at ROWS rows (default 300,000):
# the hard generated set, real teacher features of augmented Fashion-MNIST views, and the easy
# generated set (held to the target, and at the fixed effort used before bags.recall).
#   benchmarks/bag_recall_sets.sh [ROWS] [WORK] [SETS]  -> docs/bag_recall/{hard,real,easy,easy-fixed}-ROWS.json
# SETS: any of "hard real easy" (default: all three).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-300000}; work=${2:-/tmp/bag-recall}; sets=${3:-hard real easy}
py=.venv/bin/python
mkdir -p "$work" docs/bag_recall
if [[ " $sets " == *" hard "* ]]; then
[ -f "$work/hard-$rows.npy" ] || $py benchmarks/clustered_features.py --count "$rows" --hard --out "$work/hard-$rows.npy"
$py benchmarks/bag_recall.py "$work/hard-$rows.npy" --json "docs/bag_recall/hard-$rows.json"
fi
if [[ " $sets " == *" real "* ]]; then
views=$(( (rows + 59999) / 60000 ))  # augmented views of each of the 60,000 training images
[ -f "$work/views-$views/outputs.npy" ] || .venv/bin/bingo cache --teacher zoo:fashion-mnist-teacher \
    --set data.train_subset=0 --set cache.layer=features --set cache.views="$views" \
    --set trainer.progress_bar=false --out "$work/views-$views"
[ -f "$work/real-$rows.npy" ] || $py benchmarks/view_features.py "$work/views-$views/outputs.npy" --count "$rows" \
    --out "$work/real-$rows.npy"
$py benchmarks/bag_recall.py "$work/real-$rows.npy" --json "docs/bag_recall/real-$rows.json"
fi
if [[ " $sets " == *" easy "* ]]; then
[ -f "$work/easy-$rows.npy" ] || $py benchmarks/clustered_features.py --count "$rows" --out "$work/easy-$rows.npy"
$py benchmarks/bag_recall.py "$work/easy-$rows.npy" --json "docs/bag_recall/easy-$rows.json"
$py benchmarks/bag_recall.py "$work/easy-$rows.npy" --fixed --json "docs/bag_recall/easy-fixed-$rows.json"
fi
