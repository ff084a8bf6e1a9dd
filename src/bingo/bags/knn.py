"""kNN bags: each image with its K nearest neighbours by cosine similarity (exact, faiss)."""

from __future__ import annotations

import faiss
import numpy as np


def knn_bags(features: np.ndarray, k: int, chunk: int = 65536,
             anchors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's K nearest other rows of L2-normalised `features` (N, D).

    Returns (neighbours (A, K) int64, similarities (A, K) float32), nearest first, for the rows in
    `anchors` (default: all N). A row is never its own neighbour, also when exact duplicates tie with it.
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    count = len(features)
    if not 0 < k < count:
        raise ValueError(f"k must be in [1, {count - 1}] for {count} images, got {k}")
    anchors = np.arange(count) if anchors is None else np.asarray(anchors)
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(features)
    neighbours = np.empty((len(anchors), k), np.int64)
    similarities = np.empty((len(anchors), k), np.float32)
    for start in range(0, len(anchors), chunk):
        rows = anchors[start:start + chunk]
        sims, ids = index.search(features[rows], k + 1)  # (n, K+1), self usually first
        own = rows[:, None]
        keep = np.argsort(ids == own, axis=1, kind="stable")[:, :k]  # drop self wherever it ranks
        neighbours[start:start + len(ids)] = np.take_along_axis(ids, keep, 1)
        similarities[start:start + len(ids)] = np.take_along_axis(sims, keep, 1)
    return neighbours, similarities


def bag_purity(bags: np.ndarray, labels: np.ndarray, anchors: np.ndarray | None = None) -> float | None:
    """Share of bag members carrying their anchor's label; None when the data set has no labels.

    `bags` (A, K) belong to the images `anchors` (default: bag i belongs to image i).
    """
    if (labels < 0).any():
        return None
    anchor_labels = labels if anchors is None else labels[anchors]
    return float((labels[bags] == anchor_labels[:, None]).mean())
