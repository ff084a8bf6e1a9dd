#!/usr/bin/env bash
# GPU readiness: the ImageNet preset (BINGO, ResNet-18 <- ResNet-50, 224 px) on generated images, with bf16,
# channels-last and on-device augmentation; prints the logged images/s and the peak GPU memory.
#   benchmarks/gpu_check.sh            # on a GPU: STEPS=300 steps at batch 256
#   TINY=1 benchmarks/gpu_check.sh     # the same path on a CPU in a minute (small networks, 32 px)
# Uses a random-weight teacher (throughput does not depend on the weights) and its kNN bags.
set -euo pipefail
cd "$(dirname "$0")/.."
BINGO=${BINGO:-.venv/bin/bingo}
PY=${PY:-.venv/bin/python}
OUT=${OUT_DIR:-$(mktemp -d)}
STEPS=${STEPS:-300}
BATCH=${BATCH:-256}
IMAGES=$(( BATCH * (STEPS + 1) ))
sets=(--set data.name=generated --set data.generated_train_size=$IMAGES --set data.generated_test_size=256
      --set data.train_subset=0 --set data.test_subset=0 --set trainer.precision=bf16-mixed
      --set trainer.channels_last=true --set data.augment_on=device --set trainer.progress_bar=false
      --set distill.optim.epochs=1 --set distill.optim.batch_size=$BATCH --set trainer.log_every_n_steps=20
      --set trainer.devices=1)
if [ -n "${TINY:-}" ]; then
  STEPS=8 BATCH=32
  sets+=(--set data.image_size=32 --set data.eval_resize=32 --set data.generated_train_size=288
         --set distill.optim.batch_size=32 --set trainer.log_every_n_steps=2 --set teacher.arch=resnet18
         --set teacher.width=16 --set student.width=8 --set teacher.stem=cifar --set student.stem=cifar
         --set distill.bingo.queue_size=256 --set trainer.accelerator=cpu)
fi
"$PY" - "$OUT/teacher.safetensors" "${sets[@]}" <<'PYTHON'
import sys
import torch
from bingo.config import load_config
from bingo.models.checkpoints import save_encoder
from bingo.models.encoder import Encoder
args = sys.argv[2:]
cfg = load_config("imagenet-r18-r50", None, [a for a in args if a != "--set"], stage="distill")
torch.manual_seed(0)
save_encoder(Encoder(cfg.teacher, cfg.data.channels), cfg.teacher, cfg.data, sys.argv[1])
PYTHON
"$BINGO" bags --preset imagenet-r18-r50 "${sets[@]}" --teacher "$OUT/teacher.safetensors" --out "$OUT/bags"
"$BINGO" distill --preset imagenet-r18-r50 "${sets[@]}" --set trainer.limit_train_batches=$STEPS \
  --teacher "$OUT/teacher.safetensors" --bags "$OUT/bags/bags.npz" --out "$OUT/bingo"
"$PY" - "$OUT/bingo" <<'PYTHON'
import csv, json, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
with open(run / "logs" / "metrics.csv") as f:
    rates = [float(r["train/images_per_s_step"]) for r in csv.DictReader(f) if r.get("train/images_per_s_step")]
results = json.loads((run / "results.json").read_text())
print(f"BINGO R18<-R50: {statistics.median(rates[1:] or rates):.0f} anchors/s (median of {len(rates)} logged "
      f"windows), {results['steps']} steps, peak memory {results['peak_memory']}")
PYTHON
