#!/usr/bin/env bash
# The two linear protocols on the same models: `fast` (a linear layer on pre-extracted features of the
# evaluation crops) and `paper` (augmented images through the frozen backbone, BINGO's protocol, arXiv 2107.01691).
# usage: benchmarks/linear_agreement.sh DEMO_RUN OUT [PAPER_EPOCHS]   (DEMO_RUN: a finished `bingo demo` folder)
#   VARIANTS="fast paper paper_lr0.3" also runs the paper protocol at learning rate 0.3 (per 256 images)
# Writes OUT/<model>-<variant>/results.json per evaluation and OUT/agreement.json with every accuracy.
set -euo pipefail
demo=$1 out=$2 epochs=${3:-100}
bingo=${BINGO:-.venv/bin/bingo}
declare -A models=([student-random]=random [student-moco]=$demo/moco/student.safetensors
                   [student-bingo]=$demo/bingo/student.safetensors [teacher]=$demo/teacher/teacher.safetensors)
for name in student-random student-moco student-bingo teacher; do
  for variant in ${VARIANTS:-fast paper}; do
    run=$out/$name-$variant
    [ -f "$run/results.json" ] && continue
    case $variant in
      fast) extra=() ;;
      paper) extra=(--set eval.linear.lr=0) ;;
      paper_lr*) extra=(--set eval.linear.lr="${variant#paper_lr}") ;;
    esac
    [ "$variant" != fast ] && extra+=(--set eval.linear.variant=paper --set eval.linear.epochs="$epochs"
                                       --set eval.linear.batch_size=256)
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
variants = list(dict.fromkeys(v for row in table.values() for v in row))
print("| model | " + " | ".join(f"{v} top-1 / top-5 (s)" for v in variants) + " |")
print("|---|" + "---|" * len(variants))
for name, row in table.items():
    cells = [f"{row[v]['top1']:.1f} / {row[v]['top5']:.1f} ({row[v]['wall_time_s']:.0f})" if v in row else "-"
             for v in variants]
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
