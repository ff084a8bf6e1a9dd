"""kNN@10 top-1 of an encoder's backbone features and of its projection-head embeddings, side by side.

    python benchmarks/head_knn.py runs/repro/teacher/teacher.safetensors \
        runs/repro/runs/bingo/seed-0/student.safetensors

Each argument is a bingo model file (it carries its architecture). The bank is the `repro` preset's
10,000 training images, the queries its 10,000 test images, both under the evaluation transform.
The head embeddings are what BINGO, SEED and DisCo distil: how much of the labels they still
separate bounds what a student can learn from them alone.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from bingo.config import load_config
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.data.transforms import eval_transform
from bingo.eval.knn import knn_accuracy
from bingo.models.checkpoints import load_encoder
from bingo.models.encoder import Encoder


@torch.no_grad()
def features_and_embeddings(encoder: Encoder, dataset: ImageDataset, transform) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) normalised backbone features and (N, D) normalised head embeddings of every image."""
    features, embeddings = [], []
    for start in range(0, len(dataset), 500):
        images = torch.stack([transform(dataset.image(i)) for i in range(start, min(start + 500, len(dataset)))])
        pooled = encoder.features(images)
        features.append(F.normalize(pooled, dim=1))
        embeddings.append(F.normalize(encoder.head(pooled), dim=1))
    return torch.cat(features).numpy(), torch.cat(embeddings).numpy()


def main() -> None:
    cfg = load_config("repro")
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    transform = eval_transform(cfg.data)
    print("| model | kNN@10 backbone features | kNN@10 head embeddings |\n|---|---|---|")
    for path in sys.argv[1:]:
        encoder = load_encoder(path, cfg.teacher, cfg.data).eval()
        bank = features_and_embeddings(encoder, train, transform)  # (features, embeddings)
        queries = features_and_embeddings(encoder, test, transform)
        accuracy = [knn_accuracy(b, train.labels, q, test.labels, [10])[10]["top1"]
                    for b, q in zip(bank, queries, strict=True)]
        print(f"| {path} | {accuracy[0]:.1f} | {accuracy[1]:.1f} |")


if __name__ == "__main__":
    main()
