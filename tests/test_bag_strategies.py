"""Every bagging strategy on small generated data; the bag file format and the checks that guard it."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from bingo.bags.features import load_features, write_features_meta
from bingo.bags.files import GroupBags, NeighbourBags, check_bags, load_bags, save_bags
from bingo.bags.report import bag_report, write_montage
from bingo.bags.strategies import (
    cluster_bags,
    kmeans_strategy,
    label_strategy,
    make_bags,
    random_strategy,
    self_strategy,
)
from bingo.config import BagsConfig
from bingo.errors import UserError
from test_bags import brute_force, clustered, normalised

IDENTITY = {"name": "generated", "split": "train", "size": 4, "fingerprint": "abc"}


def blobs(per_blob: int = 30, count: int = 5, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated groups of points on the sphere, and which group each point is in."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:count] * 5
    labels = np.repeat(np.arange(count), per_blob)
    x = centres[labels] + rng.normal(scale=0.3, size=(len(labels), dim))
    order = rng.permutation(len(labels))
    x, labels = x[order], labels[order]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two labelings group the points identically (up to renaming the groups)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def draws(bags, anchor: int, n: int = 400) -> collections.Counter:
    torch.manual_seed(0)
    return collections.Counter(bags.positive(anchor) for _ in range(n))


def test_knn_strategy_equals_brute_force_and_records_how_it_was_made():
    features = normalised(60, 8, seed=1)
    bags = make_bags(BagsConfig(strategy="knn", k=4), features, np.zeros(60, np.int64), seed=0)
    np.testing.assert_array_equal(bags.neighbours, brute_force(features, 4)[0])
    assert bags.meta == {"strategy": "knn", "kind": "neighbours", "k": 4, "index": "exact"}


def test_approximate_knn_strategy_reports_its_recall():
    features = clustered(3000, 32, 20, seed=0)
    cfg = BagsConfig(k=5, index="IVF32,Flat", nprobe=4, train_size=3000, recall_queries=500)
    bags = make_bags(cfg, features, np.zeros(3000, np.int64), seed=0)
    assert bags.meta["index"] == "IVF32,Flat"
    assert bags.meta["recall"]["at_k"] == 5 and bags.meta["recall"]["queries"] == 500
    assert bags.meta["recall"]["value"] >= 0.95


def test_kmeans_bags_are_the_clusters_and_never_the_anchor():
    features, truth = blobs()
    bags = kmeans_strategy(features, 5, 20, seed=0)
    assert isinstance(bags, GroupBags) and same_partition(bags.groups, truth)
    assert bags.meta["clusters"] == 5 and bags.meta["singletons"] == 0
    for anchor in (0, 17, 101):
        members = bags.members(anchor)
        assert anchor not in members and set(members) == set(np.flatnonzero(truth == truth[anchor])) - {anchor}
        seen = draws(bags, anchor)
        assert set(seen) == set(members.tolist())  # uniform over the cluster, the anchor excluded
        assert min(seen.values()) > 400 / len(members) / 3
    assert bags.purity(truth) == 1.0


def test_an_image_alone_in_its_cluster_falls_back_to_its_nearest_neighbour():
    features = normalised(12, 6, seed=5)
    groups = np.array([0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 3])  # image 7 is alone
    bags = cluster_bags(features, groups, {})
    nearest = int(np.argsort(-(features @ features[7]))[1])
    assert bags.meta["singletons"] == 1
    assert bags.members(7).tolist() == [nearest] and draws(bags, 7, 20) == {nearest: 20}
    assert bags.usage()[nearest] == pytest.approx(2.0)  # its own cluster's draw plus the fallback
    assert bags.usage()[7] == 0


def test_label_bags_are_the_classes():
    labels = np.array([0, 1, 0, 2, 1, 2, 0])
    bags = label_strategy(labels)
    for anchor in range(7):
        assert set(bags.members(anchor)) == set(np.flatnonzero(labels == labels[anchor])) - {anchor}
        assert set(draws(bags, anchor, 100)) == set(bags.members(anchor).tolist())
    assert bags.purity(labels) == 1.0
    assert bags.meta == {"strategy": "labels", "kind": "groups", "classes": 3}
    with pytest.raises(UserError, match="two images per class; class 2 has one"):
        label_strategy(np.array([0, 0, 2, 1, 1]))
    with pytest.raises(UserError, match="needs a labelled data set"):
        label_strategy(np.array([0, -1, 0]))


def test_random_bags_never_hold_the_anchor_and_cover_everyone():
    bags = random_strategy(50, 5, seed=3)
    assert bags.neighbours.shape == (50, 5)
    assert not (bags.neighbours == np.arange(50)[:, None]).any()
    wide = random_strategy(200, 20, seed=0).neighbours  # 4000 draws: every image is drawn somewhere
    assert set(wide.ravel().tolist()) == set(range(200)) and not (wide == np.arange(200)[:, None]).any()
    np.testing.assert_array_equal(random_strategy(50, 5, seed=3).neighbours, bags.neighbours)
    assert not np.array_equal(random_strategy(50, 5, seed=4).neighbours, bags.neighbours)
    assert random_strategy(2, 1, seed=0).neighbours.tolist() == [[1], [0]]


def test_self_bags_hold_only_the_anchor():
    bags = make_bags(BagsConfig(strategy="self", k=10_000), None, np.array([0, 1, 1, 2]), seed=0)  # k is not used
    assert bags.meta == {"strategy": "self", "kind": "neighbours"}
    assert [bags.positive(a) for a in range(4)] == [0, 1, 2, 3] and bags.purity(np.array([0, 1, 1, 2])) == 1.0
    np.testing.assert_array_equal(self_strategy(3).members(1), [1])


@pytest.mark.parametrize("strategy,key", [("knn", "bags.k"), ("random", "bags.k"), ("kmeans", "bags.clusters")])
def test_sizes_out_of_range_are_user_errors(strategy, key):
    cfg = BagsConfig(strategy=strategy, k=10, clusters=10)
    with pytest.raises(UserError, match=f"{key}=10 must be between 1 and 9 for 10 images"):
        make_bags(cfg, normalised(10, 4, 0), np.zeros(10, np.int64), seed=0)
    with pytest.raises(UserError, match="unknown bag strategy 'nope'"):
        make_bags(BagsConfig(strategy="nope"), None, np.zeros(10, np.int64), seed=0)


def test_group_purity_and_usage_against_counting():
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1])
    bags = GroupBags(groups, {})
    want = np.mean([np.mean([labels[j] == labels[i] for j in np.flatnonzero(groups == groups[i]) if j != i])
                    for i in range(9)])
    assert bags.purity(labels) == pytest.approx(want)
    np.testing.assert_allclose(bags.usage(), np.ones(9))
    assert bags.purity(np.array([0, 0, 1, 1, 1, 0, 1, 1, -1])) is None
    with pytest.raises(ValueError, match="needs a fallback"):
        GroupBags(np.array([0, 0, 1]), {})


def test_neighbour_usage_counts_expected_draws():
    bags = NeighbourBags(np.array([[1, 2], [0, 2], [0, 1], [2, 1]]), {})
    np.testing.assert_allclose(bags.usage(), [1.0, 1.5, 1.5, 0.0])


@pytest.mark.parametrize("bags", [
    NeighbourBags(np.array([[1, 2], [0, 3], [0, 1], [2, 1]]), {"strategy": "knn", "kind": "neighbours", "k": 2},
                  np.linspace(0, 1, 8, dtype=np.float32).reshape(4, 2)),
    GroupBags(np.array([0, 1, 0, 1]), {"strategy": "kmeans", "kind": "groups", "clusters": 2}),
])
def test_bag_file_round_trip(tmp_path, bags):
    bags.meta["dataset"] = IDENTITY
    path = tmp_path / "bags.npz"
    save_bags(path, bags)
    loaded = load_bags(path)
    assert type(loaded) is type(bags) and loaded.meta == {"format": "bingo-bags/2", **bags.meta}
    for name in bags.arrays:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bags, name))


def test_bad_bag_files_are_refused_with_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_bags(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="not a bingo bag file"):
        load_bags(junk)
    old = tmp_path / "old.npz"
    np.savez(old, neighbours=np.zeros((4, 2), np.int64), meta=np.array('{"format": "bingo-bags/1"}'))
    with pytest.raises(UserError, match="not a bingo-bags/2 bag file"):
        load_bags(old)


def test_check_bags_refuses_what_does_not_match_the_run(tmp_path):
    meta = {"strategy": "knn", "kind": "neighbours", "k": 2, "dataset": IDENTITY,
            "source": {"kind": "teacher", "path": "t.safetensors", "sha256": "aaa"}}
    bags = NeighbourBags(np.array([[1, 2], [0, 3], [0, 1], [2, 1]]), meta)
    ok = {"strategy": "knn", "k": 2, "teacher": "aaa"}
    check_bags(tmp_path, bags, IDENTITY, ok)
    refusals = [
        ({**IDENTITY, "size": 5}, ok, "built for data set generated/train \\(4 images, abc\\)"),
        ({**IDENTITY, "fingerprint": "abd"}, ok, "rebuild the bags"),
        (IDENTITY, {**ok, "k": 5}, "has k 2, but this run asks for 5; drop bags.k from the command"),
        (IDENTITY, {**ok, "strategy": "kmeans"}, "has strategy knn, but this run asks for kmeans"),
        (IDENTITY, {**ok, "teacher": "bbb"}, "built from another teacher"),
    ]
    for dataset, expected, message in refusals:
        with pytest.raises(UserError, match=message):
            check_bags(tmp_path, bags, dataset, expected)
    bags.meta["source"] = {"kind": "student", "path": "s.safetensors", "sha256": "ccc"}
    check_bags(tmp_path, bags, IDENTITY, {**ok, "teacher": "bbb"})  # student bags need not match the teacher


def test_features_file_checks(tmp_path):
    identity = {**IDENTITY, "size": 6}
    path = tmp_path / "features.npy"
    np.save(path, normalised(6, 4, 0).astype(np.float16))
    features, meta = load_features(path, identity)
    assert features.shape == (6, 4) and features.dtype == np.float16 and meta == {}
    write_features_meta(path, {"dataset": identity, "source": {"kind": "teacher"}})
    assert load_features(path, identity)[1]["source"] == {"kind": "teacher"}
    with pytest.raises(UserError, match="computed on another data set"):
        load_features(path, {**identity, "fingerprint": "zzz"})
    with pytest.raises(UserError, match="features of 6 images, but the data set has 7"):
        load_features(path, {**identity, "size": 7})
    np.save(path, 3 * normalised(6, 4, 0))
    with pytest.raises(UserError, match="not L2-normalised"):
        load_features(path, identity)
    np.save(path, np.zeros((6, 4, 1), np.float32))
    with pytest.raises(UserError, match="must be \\(images, dim\\) float32 or float16"):
        load_features(path, identity)
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(UserError, match="is not a .npy array"):
        load_features(tmp_path / "text.npy", identity)
    with pytest.raises(UserError, match="does not exist"):
        load_features(tmp_path / "none.npy", identity)


def test_report_and_montage(tmp_path):
    from bingo.data.datasets import ArrayImages

    features, labels = blobs(per_blob=10, count=3)
    bags = kmeans_strategy(features, 3, 20, seed=0)
    report = bag_report(bags, labels, features, sample=30)
    assert report["purity"] == 1.0 and report["groups"]["count"] == 3 and report["groups"]["singletons"] == 0
    assert 0.5 < report["similarity"]["mean"] <= 1 and set(report["similarity"]["quantiles"]) == {
        "p1", "p10", "p50", "p90", "p99"}
    assert report["usage"]["never_used"] == 0 and report["usage"]["max"] == 1.0
    hub = NeighbourBags(np.array([[3, 1], [3, 0], [3, 0], [0, 3]]), {"strategy": "knn"})
    hub_report = bag_report(hub, np.full(4, -1), None)
    assert hub_report["purity"] is None and "similarity" not in hub_report
    assert hub_report["usage"]["most_used"][:2] == [[3, 2.0], [0, 1.5]] and hub_report["usage"]["never_used"] == 0.25
    images = ArrayImages("generated", "train", np.random.default_rng(0).integers(0, 255, (30, 8, 8), np.uint8),
                         labels, "L")
    write_montage(tmp_path / "montage.png", bags, images, rows=4, members=5)
    assert (tmp_path / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
