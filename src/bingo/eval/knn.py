"""Weighted kNN classification on normalised frozen features (InstDisc / DINO style votes)."""

from __future__ import annotations

import numpy as np

from bingo.bags.search import QUERY_CHUNK, exact_search


def knn_accuracy(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                 ks: list[int], temperature: float = 0.07, chunk: int = QUERY_CHUNK) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (%) of temperature-weighted kNN votes, for each k in `ks`.

    Each of a query's k nearest bank images (cosine similarity s) votes for its label with weight
    exp(s / temperature). Features are L2-normalised: bank (N, D), in memory or memory-mapped, and
    queries (M, D); both are read in chunks, so an ImageNet-size bank needs one chunk of memory.
    """
    classes = int(max(bank_labels.max(), query_labels.max())) + 1
    kmax = min(max(ks), len(bank))
    hits = {k: np.zeros(2) for k in ks}  # k -> [top-1 hits, top-5 hits]
    for start in range(0, len(queries), chunk):
        sims, ids = exact_search(bank, queries[start:start + chunk], kmax)  # (n, kmax), nearest first
        truth = query_labels[start:start + chunk, None]
        rows = np.arange(len(ids))[:, None]
        for k in ks:
            votes = np.zeros((len(ids), classes))
            np.add.at(votes, (rows, bank_labels[ids[:, :k]]), np.exp(sims[:, :k] / temperature))
            ranked = np.argsort(-votes, axis=1, kind="stable")[:, :5]
            hits[k] += [(ranked[:, :1] == truth).any(1).sum(), (ranked == truth).any(1).sum()]
    return {k: {"top1": 100 * h[0] / len(queries), "top5": 100 * h[1] / len(queries)} for k, h in hits.items()}
