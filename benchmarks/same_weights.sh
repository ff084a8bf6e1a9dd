#!/usr/bin/env bash
# Does the code here train bit-identical networks to commit REV? A tiny seeded chain (pretrain, kNN bags,
# BINGO and DisCo students on generated data, CPU) with each; compares the weights and the bags.
#   benchmarks/same_weights.sh REV [WORK]    e.g. benchmarks/same_weights.sh 084b3e5
# For refactors that must not change what is computed (docs/architecture.md).
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1; work=${2:-/tmp/same-weights}
rm -rf "$work"; mkdir -p "$work"
git worktree add -q --detach "$work/tree" "$rev"
trap 'git worktree remove --force "$work/tree"' EXIT
py=$PWD/.venv/bin/python
set_args=(data.name=generated data.image_size=16 data.eval_resize=16 data.generated_train_size=256
          data.generated_test_size=64 teacher.width=8 student.width=8 teacher.embed_dim=16 student.embed_dim=16
          teacher.head_hidden=32 student.head_hidden=32 trainer.progress_bar=false trainer.accelerator=cpu
          trainer.devices=1 trainer.loggers=[] pretrain.optim.epochs=1 distill.optim.epochs=1
          pretrain.optim.batch_size=64 distill.optim.batch_size=64 distill.bingo.queue_size=256
          pretrain.moco.queue_size=128 bags.k=3)
sets=(); for s in "${set_args[@]}"; do sets+=(--set "$s"); done
chain() {  # SRC OUT
    local bingo=(env PYTHONPATH="$1" "$py" -m bingo) out=$2
    "${bingo[@]}" pretrain "${sets[@]}" --out "$out/teacher" 2>/dev/null
    "${bingo[@]}" bags "${sets[@]}" --teacher "$out/teacher/teacher.safetensors" --out "$out/bags" 2>/dev/null
    for method in bingo disco; do
        "${bingo[@]}" distill "${sets[@]}" --method $method --teacher "$out/teacher/teacher.safetensors" \
            --bags "$out/bags/bags.npz" --out "$out/$method" 2>/dev/null
    done
}
chain "$work/tree/src" "$work/old"
chain "$PWD/src" "$work/new"
"$py" - "$work" <<'PY'
import sys
import numpy as np
import torch
from safetensors.torch import load_file
work, same = sys.argv[1], True
for name in ("teacher/teacher.safetensors", "bingo/student.safetensors", "disco/student.safetensors"):
    old, new = load_file(f"{work}/old/{name}"), load_file(f"{work}/new/{name}")
    equal = old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    same &= equal
    print(f"{name}: {'identical' if equal else 'DIFFERENT'}")
with np.load(f"{work}/old/bags/bags.npz") as old, np.load(f"{work}/new/bags/bags.npz") as new:
    equal = np.array_equal(old["neighbours"], new["neighbours"])
same &= equal
print(f"bags.npz neighbours: {'identical' if equal else 'DIFFERENT'}")
sys.exit(0 if same else 1)
PY
