"""How spread out an encoder's embeddings are: mean pairwise cosine of the projection-head outputs.

    python benchmarks/embedding_spread.py runs/tune/NAME/teacher.safetensors

A value near 1 means the head collapsed (every image maps to about the same embedding), and no
method that distils the teacher's embeddings (BINGO, SEED, DisCo) can learn from it.
"""

from __future__ import annotations

import sys

import torch

from bingo.config import load_config
from bingo.data.datasets import build_dataset
from bingo.data.transforms import eval_transform
from bingo.models.checkpoints import load_encoder


def main() -> None:
    cfg = load_config("demo")
    encoder = load_encoder(sys.argv[1], cfg.teacher, cfg.data).eval()
    test = build_dataset(cfg.data, "test")
    transform = eval_transform(cfg.data)
    images = torch.stack([transform(test.image(i)) for i in range(1000)])
    with torch.no_grad():
        embeddings = encoder(images)  # (1000, D), normalised
    cosine = embeddings @ embeddings.T
    off_diagonal = cosine[~torch.eye(len(cosine), dtype=torch.bool)]
    print(f"{sys.argv[1]}: mean pairwise cosine {off_diagonal.mean():.3f}")


if __name__ == "__main__":
    main()
