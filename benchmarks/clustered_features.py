"""Generated ImageNet-like features for the bag benchmarks: clustered, L2-normalised, easy or hard.

Each row is normalise(centre[c] + latent @ basis + noise): `clusters` random unit centres (classes),
a shared `latent_dim`-dimensional within-class variation whose i-th direction has variance
proportional to (i + 1)^-power (0: flat; about 1 for real CNN features), and isotropic noise.
The easy set (the default): 1,000 classes, 32 flat latent dimensions, little noise. The hard set
(`--hard`): 5,000 classes, 384 latent dimensions with a power-law spectrum, more noise, as real
features are. Written in chunks to a `.npy` file, so a 1,281,167 x 2048 set never has to be in memory.

    python benchmarks/clustered_features.py --count 100000 --out /tmp/features.npy [--hard]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CHUNK = 65536
HARD = {"clusters": 5000, "latent_dim": 384, "power": 1.0, "spread": 0.8, "noise": 0.5}  # the hard set


def write_clustered_features(path: Path, count: int, dim: int = 2048, dtype: str = "float16", clusters: int = 1000,
                             latent_dim: int = 32, spread: float = 0.6, noise: float = 0.2, power: float = 0.0,
                             seed: int = 0) -> np.ndarray:
    """Write (count, dim) features to `path` (.npy) and return their cluster labels (count,)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = (np.arange(latent_dim) + 1.0) ** (-power / 2)  # the spectrum: variance (i + 1)^-power
    scale = spread * weights / np.sqrt((weights**2).sum() * dim)
    basis = (rng.normal(size=(latent_dim, dim)) * scale[:, None]).astype(np.float32)
    labels = rng.integers(0, clusters, count)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(count, dim))
    for start in range(0, count, CHUNK):
        rows = labels[start:start + CHUNK]
        x = centres[rows] + rng.normal(size=(len(rows), latent_dim)).astype(np.float32) @ basis
        x += rng.normal(scale=noise / np.sqrt(dim), size=x.shape).astype(np.float32)
        out[start:start + len(rows)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    return labels


def main() -> None:
    """Command line: write one features file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hard", action="store_true",
                        help="the hard set: " + ", ".join(f"{k}={v}" for k, v in HARD.items()))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    labels = write_clustered_features(args.out, args.count, args.dim, args.dtype, seed=args.seed,
                                      **(HARD if args.hard else {}))
    np.save(args.out.with_suffix(".labels.npy"), labels)


if __name__ == "__main__":
    main()
