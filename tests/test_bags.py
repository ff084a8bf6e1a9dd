"""kNN bags against a brute-force search; duplicates; purity; approximate search and its recall."""

from __future__ import annotations

import numpy as np
import pytest

from bingo.bags.knn import bag_purity, knn_bags, recall_at_k
from bingo.bags.search import approximate_index, auto_index, exact_search


def normalised(count: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most similar other rows, by explicit loops over float64 inner products."""
    f = features.astype(np.float64)
    neighbours, sims = [], []
    for i in range(len(f)):
        scores = [(float(f[i] @ f[j]), j) for j in range(len(f)) if j != i]
        scores.sort(key=lambda s: -s[0])
        neighbours.append([j for _, j in scores[:k]])
        sims.append([s for s, _ in scores[:k]])
    return np.array(neighbours), np.array(sims)


@pytest.mark.parametrize("count,dim,k,chunk", [(50, 8, 5, 65536), (61, 4, 3, 7), (20, 16, 19, 6)])
def test_knn_bags_equal_brute_force(count, dim, k, chunk):
    features = normalised(count, dim, seed=count)
    neighbours, sims = knn_bags(features, k, chunk=chunk)
    want_n, want_s = brute_force(features, k)
    assert neighbours.shape == (count, k) and neighbours.dtype == np.int64
    assert sims.shape == (count, k) and sims.dtype == np.float32
    np.testing.assert_array_equal(neighbours, want_n)
    np.testing.assert_allclose(sims, want_s, atol=1e-5)
    assert not (neighbours == np.arange(count)[:, None]).any()


@pytest.mark.parametrize("k", [2, 5])
def test_duplicates_never_put_an_image_in_its_own_bag(k):
    features = normalised(12, 6, seed=3)
    copies = [0, 4, 9]
    features[copies] = features[0]  # three exact copies of one vector
    neighbours, sims = knn_bags(features, k)
    assert not (neighbours == np.arange(12)[:, None]).any()
    assert all(len(set(row)) == k for row in neighbours)  # no index twice in a bag
    for i in copies:
        others = set(copies) - {i}
        assert others <= set(neighbours[i][:2].tolist())  # the other copies come first
        np.testing.assert_allclose(sims[i][:2], 1.0, atol=1e-5)
        if k > 2:
            want_n, _ = brute_force(features, k)
            assert set(neighbours[i][2:].tolist()) == set(want_n[i][2:].tolist())


def test_many_duplicates_more_than_k():
    features = np.repeat(normalised(1, 5, seed=1), 8, axis=0)  # 8 identical rows, k = 2
    features = np.concatenate([features, normalised(4, 5, seed=2)])
    neighbours, _ = knn_bags(features, 2)
    for i in range(8):
        assert i not in neighbours[i]
        assert set(neighbours[i].tolist()) <= set(range(8))


def test_k_out_of_range():
    with pytest.raises(ValueError):
        knn_bags(normalised(5, 3, 0), 5)
    with pytest.raises(ValueError):
        knn_bags(normalised(5, 3, 0), 0)


def test_bag_purity():
    bags = np.array([[1, 2], [0, 3], [0, 1], [2, 1]])
    labels = np.array([0, 0, 1, 1])
    # hits: row 0 (label 0): 0,1 -> 1; row 1 (0): 0,1 -> 1; row 2 (1): 0,0 -> 0; row 3 (1): 1,0 -> 1.
    assert bag_purity(bags, labels) == pytest.approx(3 / 8)
    assert bag_purity(bags, np.array([0, 0, -1, 1])) is None


def test_knn_bags_for_a_sample_of_anchors_equal_those_rows_of_all_bags():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = rng.integers(0, 3, 200)
    anchors = rng.permutation(200)[:50]
    everyone, _ = knn_bags(features, 4)
    sampled, _ = knn_bags(features, 4, chunk=16, anchors=anchors)
    np.testing.assert_array_equal(sampled, everyone[anchors])
    assert bag_purity(sampled, labels, anchors) == float((labels[everyone[anchors]] == labels[anchors, None]).mean())


def clustered(count: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Normalised points around `clusters` random centres, with a low-dimensional spread inside each."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.normal(scale=0.6 / np.sqrt(8 * dim), size=(8, dim))
    x = centres[rng.integers(0, clusters, count)] + rng.normal(size=(count, 8)) @ basis
    x += rng.normal(scale=0.1 / np.sqrt(dim), size=x.shape)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("factory,refine", [("IVF64,Flat", 1), ("IVF64_HNSW32,PQ16x4fs,Refine(SQfp16)", 20)])
def test_approximate_index_reaches_recall_on_clustered_data(factory, refine):
    features = clustered(6000, 64, 40, seed=1)
    neighbours, sims = knn_bags(features, 5, factory, nprobe=8, refine_factor=refine, train_size=4000)
    assert not (neighbours == np.arange(6000)[:, None]).any()
    exact, exact_sims = knn_bags(features, 5)
    recall = float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(neighbours, exact, strict=True)]) / 5)
    assert recall >= 0.95
    assert recall_at_k(features, neighbours, 6000) == pytest.approx(recall)
    assert recall_at_k(features, exact, 500) == 1.0
    # Similarities are true inner products of the rows found, nearest first.
    np.testing.assert_allclose(sims, np.einsum("nd,nkd->nk", features, features[neighbours]), atol=2e-3)
    assert (np.diff(sims, axis=1) <= 1e-3).all()


def test_a_weak_index_shows_in_its_recall():
    features = clustered(6000, 64, 40, seed=2)
    neighbours, _ = knn_bags(features, 5, "IVF64,PQ4", nprobe=1, refine_factor=1, train_size=4000)
    assert recall_at_k(features, neighbours, 1000) < 0.9


def test_an_index_faiss_cannot_build_is_a_value_error():
    with pytest.raises(ValueError, match="faiss cannot build index 'IVF0,Nope'"):
        knn_bags(normalised(100, 8, 0), 3, "IVF0,Nope")


def test_too_few_candidates_is_a_value_error():
    with pytest.raises(ValueError, match="bags.nprobe"):
        knn_bags(clustered(400, 16, 8, 0), 5, "IVF64,Flat", nprobe=1, train_size=400)


def test_auto_index_is_exact_when_small_and_approximate_at_scale():
    assert auto_index(200_000, 2048) == "exact"
    assert auto_index(1_281_167, 2048) == "IVF4096,PQ256x4fs,Refine(SQfp16)"
    assert auto_index(1_000_000, 512) == "IVF4096,PQ64x4fs,Refine(SQfp16)"
    assert auto_index(1_000_000, 100) == "IVF4096,Flat"  # low dimension: scan exact distances


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exact_search_reads_a_memory_mapped_file_in_chunks(tmp_path, monkeypatch, dtype):
    import bingo.bags.search as search

    features = normalised(300, 8, seed=4)
    path = tmp_path / "features.npy"
    np.save(path, features.astype(dtype))
    mapped = np.load(path, mmap_mode="r")
    monkeypatch.setattr(search, "BASE_CHUNK", 64)
    sims, ids = exact_search(mapped, features[:20], 4)
    want = np.argsort(-(features[:20] @ features.astype(dtype).astype(np.float32).T), axis=1)[:, :4]
    np.testing.assert_array_equal(ids, want)
    assert sims.shape == (20, 4)


def test_the_automatic_approximate_index_reaches_recall_with_its_defaults():
    features = clustered(8000, 512, 40, seed=3)
    factory = approximate_index(len(features), 512)
    assert factory == "IVF256,PQ64x4fs,Refine(SQfp16)"
    neighbours, _ = knn_bags(features, 5, factory, train_size=8000)  # default nprobe and refine factor
    assert recall_at_k(features, neighbours, 1000) >= 0.95
