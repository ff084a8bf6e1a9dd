"""Weighted kNN classification on normalised frozen features (InstDisc / DINO style votes)."""

from __future__ import annotations

import faiss
import numpy as np


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, ks: list[int], temperature: float = 0.07,
                 chunk: int = 4096) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (%) of temperature-weighted kNN votes, for each k in `ks`.

    Each of a test image's k nearest training images (cosine similarity s) votes for its label
    with weight exp(s / temperature). Features must be L2-normalised: (N, D) and (M, D).
    """
    index = faiss.IndexFlatIP(train_features.shape[1])
    index.add(np.ascontiguousarray(train_features, dtype=np.float32))
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    kmax = max(ks)
    hits = {k: np.zeros(2) for k in ks}  # k -> [top-1 hits, top-5 hits]
    for start in range(0, len(test_features), chunk):
        queries = np.ascontiguousarray(test_features[start:start + chunk], dtype=np.float32)
        sims, ids = index.search(queries, kmax)  # (n, kmax), nearest first
        truth = test_labels[start:start + chunk, None]
        for k in ks:
            votes = np.zeros((len(queries), classes))
            np.add.at(votes, (np.arange(len(queries))[:, None], train_labels[ids[:, :k]]),
                      np.exp(sims[:, :k] / temperature))
            ranked = np.argsort(-votes, axis=1, kind="stable")[:, :5]
            hits[k] += [(ranked[:, :1] == truth).any(1).sum(), (ranked == truth).any(1).sum()]
    return {k: {"top1": 100 * h[0] / len(test_features), "top5": 100 * h[1] / len(test_features)}
            for k, h in hits.items()}
