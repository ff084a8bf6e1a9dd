"""kNN bags against a brute-force search; duplicates; purity; bag files tied to their data set."""

from __future__ import annotations

import numpy as np
import pytest

from bingo.bags.files import load_bags, save_bags
from bingo.bags.knn import bag_purity, knn_bags
from bingo.errors import UserError


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


IDENTITY = {"name": "generated", "split": "train", "size": 4, "fingerprint": "abc"}


def test_bag_file_round_trip_and_identity_check(tmp_path):
    neighbours = np.array([[1, 2], [0, 3], [0, 1], [2, 1]], np.int64)
    sims = np.linspace(0, 1, 8, dtype=np.float32).reshape(4, 2)
    path = tmp_path / "bags.npz"
    save_bags(path, neighbours, sims, {"strategy": "knn", "k": 2, "dataset": IDENTITY})
    loaded, meta = load_bags(path, IDENTITY)
    np.testing.assert_array_equal(loaded, neighbours)
    assert meta["format"] == "bingo-bags/1" and meta["k"] == 2 and meta["dataset"] == IDENTITY
    with pytest.raises(UserError, match="rebuild the bags"):
        load_bags(path, {**IDENTITY, "size": 5})
    with pytest.raises(UserError, match="does not exist"):
        load_bags(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="not a bingo bag file"):
        load_bags(junk)
    other = tmp_path / "other.npz"
    np.savez(other, neighbours=neighbours)
    with pytest.raises(UserError, match="not a bingo bag file"):
        load_bags(other)


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
