"""Approximate bags held to a recall target: tuning by measurement, the exact fallback, GPU path, bad input."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import faiss
import numpy as np
import pytest

import bingo.bags.search as search
from bingo.bags.knn import knn_bags, recall_at_k
from bingo.bags.search import auto_index, build_index, exact_search
from bingo.bags.strategies import make_bags, neighbour_strategy
from bingo.bags.tuning import tune_search
from bingo.cli import main
from bingo.config import BagsConfig
from bingo.errors import UserError
from conftest import run_main, tiny_sets

FACTORY = "IVF256,PQ48x4fs,Refine(SQfp16)"  # what bags.index=auto builds at scale, sized for these features


def _generator():
    spec = importlib.util.spec_from_file_location(
        "clustered_features", Path(__file__).parent.parent / "benchmarks" / "clustered_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hard_features(tmp_path_factory):
    """6,000 x 384 features with the benchmark's hard shape (power-law spectrum, noise), scaled down."""
    generator = _generator()
    path = tmp_path_factory.mktemp("features") / "hard.npy"
    generator.write_clustered_features(path, 6000, 384, "float32", **{**generator.HARD, "clusters": 150,
                                                                       "latent_dim": 128})
    return np.load(path)


def test_tuning_finds_the_least_effort_that_meets_the_target(hard_features):
    index = build_index(hard_features, FACTORY, 6000, seed=0)
    effort = tune_search(index, hard_features, 5, target=0.95, budget_s=120, queries=500)
    assert effort.met and effort.recall >= 0.95 and effort.parameters != "exact"
    measured = {p["parameters"]: p["recall"] for p in effort.points}
    assert measured[effort.parameters] == pytest.approx(effort.recall, abs=1e-4)
    assert min(measured.values()) < 0.95  # lower efforts were tried and fell short
    neighbours, _ = knn_bags(hard_features, 5, index)  # the index keeps the chosen effort
    assert recall_at_k(hard_features, neighbours, 2000, seed=7) >= 0.94  # fresh queries agree with the tuning
    stricter = tune_search(build_index(hard_features, FACTORY, 6000, seed=0), hard_features, 5, 0.995, 120, 500)
    assert stricter.recall >= 0.995
    looser, harder = _parameters(effort.parameters), _parameters(stricter.parameters)
    assert all(harder[name] >= value for name, value in looser.items()) and harder != looser


def _parameters(name: str) -> dict[str, float]:
    """'k_factor_rf=4,nprobe=2' -> {'k_factor_rf': 4.0, 'nprobe': 2.0}."""
    return {key: float(value) for key, value in (item.split("=") for item in name.split(","))}


def test_a_family_that_cannot_reach_the_target_falls_back_to_exact_search_when_it_fits(hard_features):
    index = build_index(hard_features, "IVF64,SQ4", 6000, seed=0)  # 4-bit scalar codes, no re-ranking
    effort = tune_search(index, hard_features, 5, target=0.99, budget_s=5.0, queries=300)  # exact: ~2 s here
    assert effort.parameters == "exact" and effort.recall == 1.0
    assert max(p["recall"] for p in effort.points) < 0.99


def test_a_target_out_of_reach_in_the_budget_is_reported_not_hidden(hard_features, caplog):
    cfg = BagsConfig(k=5, index="IVF64,PQ16x4fs", recall=0.99, time_budget=0.01, train_size=6000,
                     recall_queries=300)
    with caplog.at_level(logging.WARNING, logger="bingo"):
        bags = neighbour_strategy(hard_features, cfg, seed=0)
    record = bags.meta["recall"]
    assert record["met"] is False and record["value"] < 0.99 and record["target"] == 0.99
    assert len(record["points"]) >= 1 and record["projected_search_s"] > 0
    assert "short of the target 0.99" in caplog.text and "bags.index=exact" in caplog.text


def test_the_bag_file_records_the_effort_chosen(hard_features):
    cfg = BagsConfig(k=5, index=FACTORY, recall=0.95, time_budget=120, train_size=6000, recall_queries=500)
    record = neighbour_strategy(hard_features, cfg, seed=0).meta["recall"]
    assert record["met"] and record["value"] >= 0.95 and "nprobe=" in record["parameters"]
    assert record["build_s"] > 0 and record["tuning_s"] > 0


def test_exact_search_runs_on_a_gpu_when_faiss_has_one(monkeypatch):
    """The GPU path on CPU: faiss's GPU calls stood in by CPU ones, so the same code runs as on a GPU."""
    calls = []

    def knn_gpu(resources, queries, base, k, metric):
        calls.append(len(base))
        return faiss.knn(queries, base, k, metric=metric)

    monkeypatch.setattr(faiss, "knn_gpu", knn_gpu, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(search, "BASE_CHUNK", 1000)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2500, 16)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    sims, ids = exact_search(features, features[:50], 4)
    assert calls == [1000, 1000, 500]
    np.testing.assert_array_equal(ids, np.argsort(-(features[:50] @ features.T), axis=1)[:, :4])
    assert auto_index(1_281_167, 2048) == "exact"  # bags.index=auto: exact bags wherever a GPU is


@pytest.mark.parametrize("sets, says", [
    (["bags.recall=0"], "bags.recall must be in (0, 1]"),
    (["bags.recall=1.5"], "bags.recall must be in (0, 1]"),
    (["bags.time_budget=0"], "bags.time_budget must be a positive number of seconds"),
    (["bags.time_budget=-5"], "bags.time_budget must be a positive number of seconds"),
])
def test_bad_recall_settings_are_refused_before_any_work(tmp_path, capsys, sets, says, bingo_logger_guard):
    out = tmp_path / "bags"
    assert main(["bags", *tiny_sets(*sets, "bags.strategy=random"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("damage, says", [
    (lambda f: f.__setitem__((7, 3), np.nan), "NaN or infinite values (row 7)"),
    (lambda f: f.__setitem__(11, 0.0), "are not L2-normalised (norms 0 to 1)"),  # the features file's own check
])
def test_features_with_nan_or_zero_rows_are_refused_before_an_index_is_built(tmp_path, capsys, damage, says,
                                                                              bingo_logger_guard):
    features_dir = tmp_path / "embed"
    run_main("embed", *tiny_sets(), "--model", "random", "--out", features_dir)
    features = np.load(features_dir / "features.npy")
    damage(features)
    np.save(features_dir / "features.npy", features)
    out = tmp_path / "bags"
    assert main(["bags", *tiny_sets(), "--features", str(features_dir / "features.npy"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not out.exists()


def test_zero_rows_are_refused_by_every_feature_strategy(hard_features):
    features = hard_features[:500].copy()
    features[42] = 0.0
    for strategy in ("knn", "kmeans"):
        with pytest.raises(UserError, match=r"an all-zero row \(row 42\)"):
            make_bags(BagsConfig(strategy=strategy, k=5, clusters=10), features, np.zeros(500, np.int64), seed=0)
        bags = make_bags(BagsConfig(strategy=strategy, k=5, clusters=10), features, np.zeros(500, np.int64), seed=0,
                         unreadable=[42])  # the zero row of an image listed as unreadable is accepted
        assert len(bags) == 500


def test_tuning_queries_are_rows_the_index_was_not_trained_on(hard_features, monkeypatch):
    import bingo.bags.tuning as tuning

    asked = []
    monkeypatch.setattr(tuning, "exact_search",
                        lambda f, queries, k: asked.append(queries) or exact_search(f, queries, k))
    trained = 3000
    index = build_index(hard_features, FACTORY, trained, seed=0)
    tune_search(index, hard_features, 5, target=0.5, budget_s=60, queries=200, seed=0, trained_on=trained)
    sample = np.sort(np.random.default_rng(0).permutation(len(hard_features))[:trained])  # build_index's sample
    queried = {row.tobytes() for row in asked[0]}
    assert len(queried) == 200 and not queried & {row.tobytes() for row in hard_features[sample].astype(np.float32)}
