"""Generated ImageNet-like features for the bag benchmarks: clustered, low intrinsic dimension, L2-normalised.

Each row is normalise(centre[c] + latent @ basis + noise): `clusters` random unit centres (classes),
a shared `latent_dim`-dimensional within-class variation, and a little isotropic noise. Written in
chunks to a `.npy` file, so a 1,281,167 x 2048 set never has to be in memory.

    python benchmarks/clustered_features.py --count 100000 --out /tmp/features.npy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CHUNK = 65536


def write_clustered_features(path: Path, count: int, dim: int = 2048, dtype: str = "float16", clusters: int = 1000,
                             latent_dim: int = 32, spread: float = 0.6, noise: float = 0.2, seed: int = 0
                             ) -> np.ndarray:
    """Write (count, dim) features to `path` (.npy) and return their cluster labels (count,)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.normal(scale=spread / np.sqrt(latent_dim * dim), size=(latent_dim, dim)).astype(np.float32)
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
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    labels = write_clustered_features(args.out, args.count, args.dim, args.dtype, seed=args.seed)
    np.save(args.out.with_suffix(".labels.npy"), labels)


if __name__ == "__main__":
    main()
