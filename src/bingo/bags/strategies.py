"""The bagging strategies of BINGO (Xu et al., ICLR 2022, arXiv 2107.01691): kNN (on the teacher's or a
student's features), k-means and ground-truth labels; plus random bags (a control) and `self` (no relation:
every bag is its own image, the "keys from the teacher, no relation" row of the paper's ablation).
Each returns Bags with the metadata that describes how they were made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import faiss
import numpy as np

from bingo.bags.files import Bags, GroupBags, NeighbourBags
from bingo.bags.knn import knn_bags
from bingo.bags.search import BASE_CHUNK, auto_index, build_index, read_rows
from bingo.bags.tuning import tune_search
from bingo.config import BagsConfig
from bingo.errors import UserError

log = logging.getLogger("bingo")
STRATEGIES = ("knn", "kmeans", "labels", "random", "student", "self")
FEATURE_STRATEGIES = ("knn", "kmeans", "student")  # the strategies that need features


def make_bags(cfg: BagsConfig, features: np.ndarray | None, labels: np.ndarray, seed: int,
              progress: bool = False, unreadable: Sequence[int] = ()) -> Bags:
    """Bags of every image by `cfg.strategy`; `features` (N, D) L2-normalised where the strategy needs them,
    zero on the rows of the `unreadable` images."""
    count = len(labels)
    check_request(cfg, count)
    if cfg.strategy in ("knn", "student"):
        return neighbour_strategy(features, cfg, seed, progress, unreadable)
    if cfg.strategy == "kmeans":
        return kmeans_strategy(features, cfg.clusters, cfg.kmeans_iters, seed, unreadable)
    if cfg.strategy == "labels":
        return label_strategy(labels)
    if cfg.strategy == "self":
        return self_strategy(count)
    return random_strategy(count, cfg.k, seed)


def check_request(cfg: BagsConfig, count: int) -> None:
    """Refuse an unknown strategy, a K or C that does not fit `count` images, or a recall target or time
    budget that cannot be met, before any work is done."""
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"unknown bag strategy '{cfg.strategy}'; choose one of: {', '.join(STRATEGIES)}")
    if not 0 < cfg.recall <= 1:
        raise UserError(f"bags.recall must be in (0, 1] (a share of the true K nearest neighbours), not {cfg.recall}")
    if not cfg.time_budget > 0:
        raise UserError(f"bags.time_budget must be a positive number of seconds, not {cfg.time_budget}")
    if cfg.strategy == "kmeans":
        _check_size(cfg.clusters, count, "bags.clusters")
    elif cfg.strategy not in ("labels", "self"):
        _check_size(cfg.k, count, "bags.k")


def neighbour_strategy(features: np.ndarray, cfg: BagsConfig, seed: int, progress: bool = False,
                       unreadable: Sequence[int] = ()) -> NeighbourBags:
    """Each image's K nearest neighbours; an approximate index reports its recall against exact search."""
    count, dim = features.shape
    _check_size(cfg.k, count, "bags.k")
    check_features(features, unreadable)
    index = auto_index(count, dim) if cfg.index == "auto" else cfg.index
    meta = {"strategy": cfg.strategy, "kind": "neighbours", "k": cfg.k, "index": index}
    try:
        search, meta["recall"] = _search_effort(features, index, cfg, seed, progress)
        neighbours, similarities = knn_bags(features, cfg.k, search, nprobe=cfg.nprobe,
                                            refine_factor=cfg.refine_factor, train_size=cfg.train_size, seed=seed,
                                            progress=progress)
    except ValueError as err:
        raise UserError(f"{err} (bags.index={cfg.index})") from None
    if meta["recall"] is None:
        del meta["recall"]
    return NeighbourBags(neighbours, meta, similarities)


def _search_effort(features: np.ndarray, index: str, cfg: BagsConfig, seed: int,
                   progress: bool) -> tuple[str | faiss.Index, dict | None]:
    """The index to search (or 'exact') and its recall record: tuned to cfg.recall, or measured at a fixed effort."""
    if index == "exact" or not cfg.recall_queries:
        return index, None
    started = time.perf_counter()
    built = build_index(features, index, cfg.train_size, seed, cfg.nprobe, cfg.refine_factor, progress)
    queries = min(cfg.recall_queries, len(features))
    budget = cfg.time_budget - (time.perf_counter() - started)
    effort = tune_search(built, features, cfg.k, cfg.recall, budget, queries, seed, trained_on=cfg.train_size)
    record = {"at_k": cfg.k, "queries": queries, "value": round(effort.recall, 4),
              "build_s": round(time.perf_counter() - started - effort.tuning_s, 1), **effort.summary(len(features))}
    if not effort.met:
        log.warning("bags: recall@%d %.3f is short of the target %.2f within bags.time_budget=%g s (effort %s); "
                    "raise bags.time_budget, or use bags.index=exact", cfg.k, effort.recall, cfg.recall,
                    cfg.time_budget, effort.parameters)
    else:
        log.info("bags: recall@%d %.3f >= %.2f with %s (projected search %.0f s)", cfg.k, effort.recall, cfg.recall,
                 effort.parameters, record["projected_search_s"])
    return ("exact" if effort.parameters == "exact" else built), record


def check_features(features: np.ndarray, unreadable: Sequence[int] = ()) -> None:
    """Refuse features with NaN or infinite values, or all-zero rows (no direction to compare) other than
    those of the `unreadable` images, in one line."""
    listed = np.zeros(len(features), bool)
    listed[[i for i in unreadable if 0 <= i < len(features)]] = True
    for start in range(0, len(features), BASE_CHUNK):
        rows = read_rows(features, start, min(len(features), start + BASE_CHUNK))
        bad = ~np.isfinite(rows).all(1)
        zero = (np.linalg.norm(np.nan_to_num(rows), axis=1) < 1e-6) & ~listed[start:start + len(rows)]
        if bad.any() or zero.any():
            row = start + int(np.flatnonzero(bad | zero)[0])
            what = "NaN or infinite values" if bad.any() else "an all-zero row"
            raise UserError(f"the features hold {what} (row {row}); compute them again (bingo embed), "
                            "or remove those images")


def kmeans_strategy(features: np.ndarray, clusters: int, iters: int, seed: int,
                    unreadable: Sequence[int] = ()) -> GroupBags:
    """Spherical k-means with C clusters; an image alone in its cluster falls back to its nearest neighbour."""
    count, dim = features.shape
    _check_size(clusters, count, "bags.clusters")
    check_features(features, unreadable)
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
