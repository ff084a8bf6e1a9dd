#!/usr/bin/env bash
# The two linear protocols on the same models: `fast` (a linear layer on pre-extracted features of the
# evaluation crops) and `paper` (augmented images through the frozen backbone, method.md §3).
# usage: benchmarks/linear_agreement.sh DEMO_RUN OUT [PAPER_EPOCHS]   (DEMO_RUN: a finished `bingo demo` folder)
# Writes OUT/<model>-<variant>/results.json per evaluation and OUT/agreement.json with every accuracy.
set -euo pipefail
demo=$1 out=$2 epochs=${3:-100}
bingo=${BINGO:-.venv/bin/bingo}
declare -A models=([student-random]=random [student-moco]=$demo/moco/student.safetensors
                   [student-bingo]=$demo/bingo/student.safetensors [teacher]=$demo/teacher/teacher.safetensors)
for name in student-random student-moco student-bingo teacher; do
  for variant in fast paper; do
    run=$out/$name-$variant
    [ -f "$run/results.json" ] && continue
    extra=()
    [ "$variant" = paper ] && extra=(--set eval.linear.variant=paper --set eval.linear.epochs="$epochs"
                                      --set eval.linear.batch_size=256 --set eval.linear.lr=0)
    "$bingo" eval linear --model "${models[$name]}" --out "$run" --set trainer.progress_bar=false "${extra[@]}" \
      > "$out/$name-$variant.log" 2>&1
    echo "$name $variant: $(grep -o '"top1": [0-9.]*' "$run/results.json")"
  done
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
table = {}
for path in sorted(out.glob("*/results.json")):
    results = json.loads(path.read_text())
    (row,) = results["rows"].values()
    name, variant = path.parent.name.rsplit("-", 1)
    table.setdefault(name, {})[variant] = {**row["linear"], "wall_time_s": results["wall_time_s"]}
(out / "agreement.json").write_text(json.dumps(table, indent=2))
print("| model | fast top-1 | paper top-1 | fast top-5 | paper top-5 | fast s | paper s |\n|---|---|---|---|---|---|---|")
for name, v in table.items():
    print(f"| {name} | {v['fast']['top1']:.1f} | {v['paper']['top1']:.1f} | {v['fast']['top5']:.1f} | "
          f"{v['paper']['top5']:.1f} | {v['fast']['wall_time_s']:.0f} | {v['paper']['wall_time_s']:.0f} |")
PY
