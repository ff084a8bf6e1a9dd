"""Real features for the bag-recall benchmark: a teacher's backbone features of augmented views, one row each.

`bingo cache` computes the teacher's pooled backbone features of V augmented views of every training
image, (N, V, F); this flattens them into (N*V, F) rows, L2-normalised, keeps the first --count rows
and writes them as a float16 .npy for benchmarks/bag_recall.py:

    bingo cache --teacher zoo:fashion-mnist-teacher --set data.train_subset=0 --set cache.layer=features \
        --set cache.views=5 --out runs/views-5
    python benchmarks/view_features.py runs/views-5/outputs.npy --count 300000 --out /tmp/real-300k.npy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CHUNK = 65_536  # rows normalised at a time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", type=Path, help="the outputs.npy of a `bingo cache` run with cache.layer=features")
    parser.add_argument("--count", type=int, required=True, help="rows to keep (at most images x views)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    views = np.load(args.outputs, mmap_mode="r")  # (N, V, F) float16
    if views.ndim != 3:
        raise SystemExit(f"{args.outputs} holds shape {views.shape}, not (images, views, features)")
    rows = views.reshape(-1, views.shape[-1])  # image-major: every view of image 0, then of image 1, ...
    if args.count > len(rows):
        raise SystemExit(f"{args.outputs} has {len(rows)} rows; cache more views for --count {args.count}")
    out = np.lib.format.open_memmap(args.out, mode="w+", dtype=np.float16, shape=(args.count, rows.shape[1]))
    for start in range(0, args.count, CHUNK):
        chunk = np.asarray(rows[start:min(args.count, start + CHUNK)], dtype=np.float32)
        out[start:start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True).clip(1e-12)
    out.flush()
    print(f"{args.out}: {args.count} x {rows.shape[1]} float16 rows from {views.shape[0]} images x "
          f"{views.shape[1]} views")


if __name__ == "__main__":
    main()
