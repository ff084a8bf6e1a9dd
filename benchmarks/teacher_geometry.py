"""How spread a teacher's embeddings are: why one teacher's keys are easier to distil than another's.

For each teacher of a `bingo repro` folder (the repro teacher and OUT/teachers/*), on 4,096 of its training
images: the mean cosine between two images' embeddings, the mean cosine to the nearest other image, and the
entropy of the softmax over the other images' similarities at τ = 0.1 (BINGO's and MoCo-v2's target over a
queue), as a share of its maximum, ln 4095.

    python benchmarks/teacher_geometry.py runs/repro
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bingo.config import Config, load_config  # noqa: E402
from bingo.data.datasets import build_dataset  # noqa: E402
from bingo.models.checkpoints import load_encoder  # noqa: E402

IMAGES, TEMPERATURE = 4096, 0.1


def geometry(teacher: Path, images: torch.Tensor, cfg: Config) -> tuple[float, float, float]:
    """(mean pairwise cosine, mean nearest-neighbour cosine, softmax entropy share) of the teacher's embeddings."""
    encoder = load_encoder(str(teacher), cfg.teacher, cfg.data).eval()
    with torch.inference_mode():
        embeddings = torch.cat([encoder(images[i:i + 512]) for i in range(0, len(images), 512)])  # (N, D)
    similarity = embeddings @ embeddings.T
    others = similarity[~torch.eye(len(similarity), dtype=torch.bool)].view(len(similarity), -1)  # (N, N - 1)
    p = torch.softmax(others / TEMPERATURE, 1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean() / math.log(others.shape[1])
    return others.mean().item(), others.max(1).values.mean().item(), entropy.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repro", type=Path, help="a 'bingo repro' folder")
    args = parser.parse_args()
    cfg = load_config("repro")
    data = build_dataset(cfg.data, "train")
    chosen = np.sort(np.random.default_rng(0).permutation(len(data))[:IMAGES])
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (cfg.data.mean, cfg.data.std))
    images = (data.batch(chosen).float() / 255 - mean) / std  # (N, C, H, W), the evaluation's normalisation
    pretrained = sorted(args.repro.glob("teachers/*/teacher/teacher.safetensors"))
    teachers = {path.parent.parent.name: path for path in pretrained}
    teachers["repro teacher"] = Path(cfg.teacher.checkpoint)
    print(f"| teacher | mean cosine of two images | mean cosine to the nearest of {IMAGES - 1:,} | "
          f"softmax entropy at τ {TEMPERATURE} / ln {IMAGES - 1} |")
    print("|---|---|---|---|")
    for name, path in teachers.items():
        pairwise, nearest, entropy = geometry(path, images, cfg)
        print(f"| {name} | {pairwise:.3f} | {nearest:.3f} | {entropy:.3f} |")


if __name__ == "__main__":
    main()
