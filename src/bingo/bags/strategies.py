"""The bagging strategies of BINGO (Xu et al., ICLR 2022, arXiv 2107.01691): kNN (on the teacher's or a
student's features), k-means and ground-truth labels; plus random bags (a control) and `self` (no relation:
every bag is its own image, the "keys from the teacher, no relation" row of the paper's ablation).
Each returns Bags with the metadata that describes how they were made.
"""

from __future__ import annotations

import faiss
import numpy as np

from bingo.bags.files import Bags, GroupBags, NeighbourBags
from bingo.bags.knn import knn_bags, recall_at_k
from bingo.bags.search import BASE_CHUNK, auto_index, read_rows
from bingo.config import BagsConfig
from bingo.errors import UserError

STRATEGIES = ("knn", "kmeans", "labels", "random", "student", "self")
FEATURE_STRATEGIES = ("knn", "kmeans", "student")  # the strategies that need features


def make_bags(cfg: BagsConfig, features: np.ndarray | None, labels: np.ndarray, seed: int,
              progress: bool = False) -> Bags:
    """Bags of every image by `cfg.strategy`; `features` (N, D) L2-normalised where the strategy needs them."""
    count = len(labels)
    check_request(cfg, count)
    if cfg.strategy in ("knn", "student"):
        return neighbour_strategy(features, cfg, seed, progress)
    if cfg.strategy == "kmeans":
        return kmeans_strategy(features, cfg.clusters, cfg.kmeans_iters, seed)
    if cfg.strategy == "labels":
        return label_strategy(labels)
    if cfg.strategy == "self":
        return self_strategy(count)
    return random_strategy(count, cfg.k, seed)


def check_request(cfg: BagsConfig, count: int) -> None:
    """Refuse an unknown strategy, or a K or C that does not fit `count` images, before any work is done."""
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"unknown bag strategy '{cfg.strategy}'; choose one of: {', '.join(STRATEGIES)}")
    if cfg.strategy == "kmeans":
        _check_size(cfg.clusters, count, "bags.clusters")
    elif cfg.strategy not in ("labels", "self"):
        _check_size(cfg.k, count, "bags.k")


def neighbour_strategy(features: np.ndarray, cfg: BagsConfig, seed: int, progress: bool = False) -> NeighbourBags:
    """Each image's K nearest neighbours; an approximate index reports its recall against exact search."""
    count, dim = features.shape
    _check_size(cfg.k, count, "bags.k")
    index = auto_index(count, dim) if cfg.index == "auto" else cfg.index
    try:
        neighbours, similarities = knn_bags(features, cfg.k, index, nprobe=cfg.nprobe,
                                            refine_factor=cfg.refine_factor, train_size=cfg.train_size, seed=seed,
                                            progress=progress)
    except ValueError as err:
        raise UserError(f"{err} (bags.index={cfg.index})") from None
    meta = {"strategy": cfg.strategy, "kind": "neighbours", "k": cfg.k, "index": index}
    if index != "exact" and cfg.recall_queries:
        queries = min(cfg.recall_queries, count)
        meta["recall"] = {"at_k": cfg.k, "queries": queries,
                          "value": round(recall_at_k(features, neighbours, queries, seed), 4)}
    return NeighbourBags(neighbours, meta, similarities)


def kmeans_strategy(features: np.ndarray, clusters: int, iters: int, seed: int) -> GroupBags:
    """Spherical k-means with C clusters; an image alone in its cluster falls back to its nearest neighbour."""
    count, dim = features.shape
    _check_size(clusters, count, "bags.clusters")
    kmeans = faiss.Kmeans(dim, clusters, niter=iters, spherical=True, seed=seed, verbose=False,
                          max_points_per_centroid=256, min_points_per_centroid=1)
    sample = np.sort(np.random.default_rng(seed).permutation(count)[:clusters * 256])
    kmeans.train(np.ascontiguousarray(features[sample], dtype=np.float32))
    groups = np.concatenate([kmeans.index.search(read_rows(features, start, min(count, start + BASE_CHUNK)), 1)[1][:, 0]
                             for start in range(0, count, BASE_CHUNK)])
    _, groups = np.unique(groups, return_inverse=True)  # ids 0..C'-1 over the non-empty clusters
    meta = {"strategy": "kmeans", "kind": "groups", "clusters": clusters, "kmeans_iters": iters,
            "empty_clusters": int(clusters - groups.max() - 1)}
    return cluster_bags(features, groups, meta)


def cluster_bags(features: np.ndarray, groups: np.ndarray, meta: dict) -> GroupBags:
    """Group bags from cluster ids (N,); an image alone in its cluster gets its nearest neighbour instead."""
    fallback = np.full(len(groups), -1, np.int64)
    lonely = np.flatnonzero(np.bincount(groups)[groups] == 1)
    if len(lonely):
        fallback[lonely] = knn_bags(features, 1, anchors=lonely)[0][:, 0]
    return GroupBags(groups, {**meta, "singletons": len(lonely)}, fallback)


def label_strategy(labels: np.ndarray) -> GroupBags:
    """Every image's bag is its class (an oracle, for ablations)."""
    if (labels < 0).any():
        raise UserError("bags.strategy=labels needs a labelled data set, and this one has unlabelled images")
    sizes = np.bincount(labels)
    if (sizes == 1).any():
        raise UserError(f"bags.strategy=labels needs two images per class; class {int(np.argmax(sizes == 1))} "
                        "has one")
    _, groups = np.unique(labels, return_inverse=True)
    return GroupBags(groups, {"strategy": "labels", "kind": "groups", "classes": int(groups.max() + 1)})


def random_strategy(count: int, k: int, seed: int) -> NeighbourBags:
    """K images drawn at random for every image, never the image itself (the control)."""
    _check_size(k, count, "bags.k")
    draws = np.random.default_rng(seed).integers(0, count - 1, size=(count, k))
    neighbours = draws + (draws >= np.arange(count)[:, None])  # skip the anchor's own index
    return NeighbourBags(neighbours, {"strategy": "random", "kind": "neighbours", "k": k})


def self_strategy(count: int) -> NeighbourBags:
    """Every image's bag is the image alone: its positive is a second pair of views of itself (no relation)."""
    return NeighbourBags(np.arange(count)[:, None], {"strategy": "self", "kind": "neighbours"})


def _check_size(value: int, count: int, key: str) -> None:
    if not 0 < value < count:
        raise UserError(f"{key}={value} must be between 1 and {count - 1} for {count} images")
