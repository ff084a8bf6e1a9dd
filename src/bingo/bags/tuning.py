"""A recall target for approximate kNN bags: the cheapest search effort that meets it, found by measurement.

A combination meets the target when its measured recall does with two standard errors to spare. The
index's parameters (nprobe, the Refine shortlist `k_factor_rf`, an HNSW quantizer's efSearch)
come from faiss's `ParameterSpace`; each combination is timed on a sample of queries and scored
against exact search, kept on a faiss `OperatingPoints` Pareto front, in order of increasing effort level.
A combination at least as costly as one that met the target, or no costlier than one that missed
it, is skipped (recall grows with every parameter), and the search ends with the first level at which
some combination meets the target. When no combination meets the target within
the time budget, exact search is chosen if its projected time fits the budget; otherwise the best
recall reached is kept and reported as short of the target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from bingo.bags.search import exact_search


@dataclass
class SearchEffort:
    """What tuning chose: faiss parameters ('exact' for exact search), recall reached, and the evidence."""

    parameters: str
    recall: float
    met: bool
    seconds_per_query: float
    target: float
    tuning_s: float
    points: list[dict] = field(default_factory=list)  # every combination measured: parameters, recall, ms/query

    def summary(self, count: int) -> dict:
        """JSON-ready record for the bag file: choice, recall, projected search time of `count` queries."""
        return {"parameters": self.parameters, "recall": round(self.recall, 4), "target": self.target,
                "met": self.met, "projected_search_s": round(self.seconds_per_query * count, 3),
                "tuning_s": round(self.tuning_s, 1), "points": self.points}


def tune_search(index: faiss.Index, features: np.ndarray, k: int, target: float, budget_s: float, queries: int,
                seed: int = 0, trained_on: int = 0) -> SearchEffort:
    """Set `index` to the cheapest measured effort whose recall@k (self excluded) reaches `target`.

    `trained_on`: the index was trained on the first rows of the seed's permutation (`search.build_index`);
    the queries come after them, for a query the coarse quantizer was fitted to finds its neighbours more
    easily (measured: recall 0.958 on such queries, 0.92-0.93 on others, 1,281,167 real features).
    """
    started = time.perf_counter()
    order = np.random.default_rng(seed).permutation(len(features))
    start = min(trained_on, max(0, len(features) - queries))  # held-out rows, as many as there are
    anchors = np.sort(order[start:start + queries])
    probe = np.ascontiguousarray(features[anchors], dtype=np.float32)
    tick = time.perf_counter()
    _, truth = exact_search(features, probe, k + 1)  # (Q, k+1)
    exact_per_query = (time.perf_counter() - tick) / len(anchors)
    truth = _without_self(truth, anchors, k)
    space = faiss.ParameterSpace()
    space.initialize(index)
    front = faiss.OperatingPoints()
    met: list[int] = []
    missed: list[int] = []
    points: list[dict] = []
    levels = _by_effort(space)
    for combination in levels:
        if points and time.perf_counter() - started > budget_s:  # at least one point is always measured
            break
        if met and levels[combination] > min(levels[m] for m in met):
            break  # the least effort that meets the target is found: its level is done
        if any(space.combination_ge(combination, m) for m in met) or \
                any(space.combination_ge(m, combination) for m in missed):
            continue
        name = space.combination_name(combination)
        space.set_index_parameters(index, name)
        tick = time.perf_counter()
        _, found = index.search(probe, k + 1)
        per_query = (time.perf_counter() - tick) / len(anchors)
        recall = _recall(_without_self(found, anchors, k), truth)
        front.add(recall, per_query, name)
        points.append({"parameters": name, "recall": round(recall, 4), "ms_per_query": round(1e3 * per_query, 3)})
        (met if _surely_meets(recall, truth.size, target) else missed).append(combination)
    best = _choice(points, target, truth.size)
    elapsed = time.perf_counter() - started
    met_target = _surely_meets(best["recall"], truth.size, target)
    if not met_target and exact_per_query * len(features) <= budget_s:  # exact search alone fits the budget
        return SearchEffort("exact", 1.0, True, exact_per_query, target, elapsed, points)
    space.set_index_parameters(index, best["parameters"])
    return SearchEffort(best["parameters"], best["recall"], met_target, best["ms_per_query"] / 1e3, target, elapsed,
                        points)


def _by_effort(space: faiss.ParameterSpace) -> dict[int, int]:
    """Combination number -> effort level (sum of each parameter's position in its range), least effort first."""
    sizes = [space.parameter_ranges.at(i).values.size() for i in range(space.parameter_ranges.size())]

    def level(combination: int) -> int:
        total = 0
        for size in sizes:  # faiss numbers combinations with the first parameter varying fastest
            total += combination % size
            combination //= size
        return total

    order = sorted(range(space.n_combinations()), key=lambda c: (level(c), c))
    return {c: level(c) for c in order}


def _surely_meets(recall: float, neighbours: int, target: float) -> bool:
    """Whether a recall measured on `neighbours` true neighbours meets the target with two standard errors to
    spare, so that the whole data set's recall meets it too (a bare `recall >= target` would miss it about half
    the time when the two are close)."""
    return recall - 2 * math.sqrt(recall * (1 - recall) / neighbours) >= target


def _choice(points: list[dict], target: float, neighbours: int) -> dict:
    """The fastest point that surely meets the target, else the one with the best recall."""
    meeting = [p for p in points if _surely_meets(p["recall"], neighbours, target)]
    if meeting:
        return min(meeting, key=lambda p: p["ms_per_query"])
    return max(points, key=lambda p: (p["recall"], -p["ms_per_query"]))


def _without_self(ids: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """(Q, k+1) neighbour ids -> (Q, k) with each query's own row dropped wherever it ranks."""
    keep = np.argsort(ids == anchors[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, keep, 1)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours (Q, k) among the found ones (Q, k)."""
    return float(sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)) / truth.size)
