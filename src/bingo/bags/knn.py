"""kNN bags: each image with its K nearest other images by cosine similarity, exact or approximate."""

from __future__ import annotations

import faiss
import numpy as np

from bingo.bags.search import QUERY_CHUNK, build_index, exact_search, read_rows


def knn_bags(features: np.ndarray, k: int, index: str | faiss.Index = "exact", anchors: np.ndarray | None = None,
             chunk: int | None = None, nprobe: int = 16, refine_factor: float = 10.0, train_size: int = 65536,
             seed: int = 0, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's K nearest other rows of L2-normalised `features` (N, D).

    `index`: "exact", a faiss factory string (approximate; `nprobe`, `refine_factor` set its effort), or
    an index already built over `features` (its effort set, e.g. by `tuning.tune_search`).
    Queries run in chunks of `chunk` rows (default: smaller for an approximate index, whose per-query
    lookup tables grow with nprobe).
    Returns (neighbours (A, K) int64, similarities (A, K) float32), nearest first, for the rows in
    `anchors` (default: all N). A row is never its own neighbour, also when exact duplicates tie with it.
    """
    count = len(features)
    if not 0 < k < count:
        raise ValueError(f"k must be in [1, {count - 1}] for {count} images, got {k}")
    anchors = np.arange(count) if anchors is None else np.asarray(anchors)
    exact = isinstance(index, str) and index == "exact"
    if exact:
        search = lambda queries: exact_search(features, queries, k + 1)  # noqa: E731
    else:
        built = index if isinstance(index, faiss.Index) else \
            build_index(features, index, train_size, seed, nprobe, refine_factor, progress)
        search = lambda queries: built.search(queries, k + 1)  # noqa: E731
    chunk = chunk or (QUERY_CHUNK if exact else QUERY_CHUNK // 8)
    neighbours = np.empty((len(anchors), k), np.int64)
    similarities = np.empty((len(anchors), k), np.float32)
    for start in range(0, len(anchors), chunk):
        rows = anchors[start:start + chunk]
        sims, ids = search(_rows(features, rows))  # (n, K+1), self usually first
        if (ids < 0).any():
            raise ValueError(f"the approximate index found fewer than {k + 1} neighbours for some images; "
                             "search more lists (bags.nprobe) or use bags.index=exact")
        keep = np.argsort(ids == rows[:, None], axis=1, kind="stable")[:, :k]  # drop self wherever it ranks
        neighbours[start:start + len(rows)] = np.take_along_axis(ids, keep, 1)
        similarities[start:start + len(rows)] = np.take_along_axis(sims, keep, 1)
    return neighbours, similarities


def recall_at_k(features: np.ndarray, neighbours: np.ndarray, queries: int, seed: int = 0) -> float:
    """Share of the exact K nearest neighbours that `neighbours` (N, K) found, on sampled query rows."""
    anchors = np.sort(np.random.default_rng(seed).permutation(len(features))[:queries])
    exact, _ = knn_bags(features, neighbours.shape[1], "exact", anchors)
    found = [len(np.intersect1d(a, b)) for a, b in zip(neighbours[anchors], exact, strict=True)]
    return float(np.sum(found) / exact.size)


def _rows(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The given rows as float32; contiguous runs (the common case: all anchors) read as one block."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
        return read_rows(features, int(rows[0]), int(rows[-1]) + 1)
    return np.ascontiguousarray(features[rows], dtype=np.float32)


def bag_purity(bags: np.ndarray, labels: np.ndarray, anchors: np.ndarray | None = None) -> float | None:
    """Share of bag members carrying their anchor's label; None when the data set has no labels.

    `bags` (A, K) belong to the images `anchors` (default: bag i belongs to image i).
    """
    if (labels < 0).any():
        return None
    anchor_labels = labels if anchors is None else labels[anchors]
    return float((labels[bags] == anchor_labels[:, None]).mean())
