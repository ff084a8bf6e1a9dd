"""Generated images, the bag data set's positives and views, and CutMix's box and weight."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from bingo.bags.files import NeighbourBags
from bingo.bags.knn import knn_bags
from bingo.data.datasets import build_dataset
from bingo.data.transforms import cutmix, eval_transform, moco_v2_transform
from bingo.data.views import BagViews, Views
from bingo.errors import UserError
from conftest import TRAIN_SIZE, tiny_config

K = 3


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def train(cfg):
    return build_dataset(cfg.data, "train")


@pytest.fixture(scope="module")
def bags(train):
    x = np.random.default_rng(0).normal(size=(len(train), 8)).astype(np.float32)
    return NeighbourBags(knn_bags(x / np.linalg.norm(x, axis=1, keepdims=True), K)[0], {})


def test_generated_data_is_fixed_and_class_structured(cfg, train):
    again = build_dataset(cfg.data, "train")
    labeled, test = build_dataset(cfg.data, "labeled"), build_dataset(cfg.data, "test")
    assert len(train) == TRAIN_SIZE and len(test) == cfg.data.generated_test_size
    np.testing.assert_array_equal(train.pixels, again.pixels)
    assert train.identity == again.identity and train.identity["size"] == TRAIN_SIZE
    np.testing.assert_array_equal(train.pixels, labeled.pixels)  # labeled = the training images, with labels
    assert labeled.identity["split"] == "labeled" and train.identity["split"] == "train"
    assert test.identity["fingerprint"] != train.identity["fingerprint"]
    assert set(np.unique(train.labels)) <= set(range(cfg.data.generated_classes))
    image = train.image(0)
    assert image.mode == "RGB" and image.size == (16, 16)
    # Same-class images are closer than other-class images on average (the classes are learnable).
    x = train.pixels.reshape(len(train), -1).astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    same = train.labels[:, None] == train.labels[None, :]
    np.fill_diagonal(same, False)
    other = train.labels[:, None] != train.labels[None, :]
    assert sims[same].mean() > sims[other].mean() + 0.2


def test_generated_other_size_has_another_identity(cfg, train):
    bigger = tiny_config("data.generated_train_size=160")
    assert build_dataset(bigger.data, "train").identity != train.identity
    subset = build_dataset(tiny_config("data.train_subset=50").data, "train")
    assert len(subset) == 50 and subset.identity["size"] == 50
    gray = build_dataset(tiny_config("data.channels=1", "data.mean=[0.5]", "data.std=[0.25]").data, "train")
    assert gray.image(0).mode == "L"


def test_bad_data_config_is_a_user_error():
    with pytest.raises(UserError, match="unknown data set"):
        build_dataset(tiny_config("data.name=mnist-ish").data, "train")
    with pytest.raises(UserError, match="one per channel"):
        build_dataset(tiny_config("data.mean=[0.5]").data, "train")
    with pytest.raises(UserError, match="not found"):
        build_dataset(tiny_config("data.name=cifar10", "data.root=/nonexistent", "data.download=false").data,
                      "train")
    with pytest.raises(UserError, match="no train/ subfolder"):
        build_dataset(tiny_config("data.name=imagefolder", "data.root=/nonexistent").data, "train")


def test_bag_views_positive_is_a_bag_member(cfg, train, bags):
    views = BagViews(train, bags, eval_transform(cfg.data))
    assert len(views) == len(train)
    draws = collections.defaultdict(collections.Counter)
    torch.manual_seed(0)
    for _ in range(5):
        for index in range(len(train)):
            _, label, anchor, positive = views[index]
            assert anchor == index and label == train.labels[index]
            assert positive in bags.neighbours[index] and positive != index
            draws[index][positive] += 1
    torch.manual_seed(1)
    counts = collections.Counter(views[7][3] for _ in range(300))
    assert set(counts) == set(bags.neighbours[7].tolist())  # every bag member is drawn ...
    assert min(counts.values()) > 300 / K / 2  # ... about uniformly


def test_bag_views_four_views(cfg, train, bags):
    transform = eval_transform(cfg.data)
    (qa, ka, qp, kp), _, index, positive = BagViews(train, bags, transform)[5]
    for view in (qa, ka, qp, kp):
        assert view.shape == (3, 16, 16) and view.dtype == torch.float32
    # Deterministic transform: the first two views are the anchor, the last two its positive.
    torch.testing.assert_close(qa, transform(train.image(index)))
    torch.testing.assert_close(ka, transform(train.image(index)))
    torch.testing.assert_close(qp, transform(train.image(positive)))
    torch.testing.assert_close(kp, transform(train.image(positive)))
    # Augmented: four independent draws.
    torch.manual_seed(0)
    augmented = BagViews(train, bags, moco_v2_transform(cfg.data, cfg.augment))[5][0]
    assert [v.shape for v in augmented] == [(3, 16, 16)] * 4
    assert not torch.equal(augmented[0], augmented[1]) and not torch.equal(augmented[2], augmented[3])
    with pytest.raises(ValueError):
        BagViews(train, NeighbourBags(bags.neighbours[:-1], {}), transform)


def test_views_and_collation(cfg, train):
    loader = torch.utils.data.DataLoader(Views(train, moco_v2_transform(cfg.data, cfg.augment), 2), batch_size=4)
    (q, k), labels, index = next(iter(loader))
    assert q.shape == k.shape == (4, 3, 16, 16)
    assert labels.tolist() == train.labels[:4].tolist() and index.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("height,width", [(16, 16), (12, 20)])
def test_cutmix_weight_is_the_surviving_area(height, width):
    batch, channels = 3, 2
    base = torch.zeros(batch, channels, height, width)
    source = 1 + torch.arange(batch * channels * height * width, dtype=torch.float32).view_as(base)
    lams = []
    for seed in range(200):
        torch.manual_seed(seed)
        mixed, lam = cutmix(base, source, 2.0)
        assert torch.equal(base, torch.zeros_like(base))  # the inputs are not modified
        changed = mixed != base  # (B, C, H, W)
        area = changed[0, 0]
        assert all(torch.equal(changed[b, c], area) for b in range(batch) for c in range(channels))  # one box
        assert lam == pytest.approx(1 - int(area.sum()) / (height * width), abs=1e-12)
        assert torch.equal(mixed[changed], source[changed])  # pasted from the same place in the source
        if area.any():
            rows, cols = area.any(1).nonzero().flatten(), area.any(0).nonzero().flatten()
            box = area[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all()  # a rectangle
        lams.append(lam)
    assert 0 < min(lams) and max(lams) <= 1
    assert sum(lam < 1 for lam in lams) > 150  # a box is pasted in most draws
    assert 0.4 < float(np.mean(lams)) < 0.9  # box area ~ 1 - Beta(2, 2), shrunk by clipping and rounding


def image_folder(root, sizes=((20, 30), (40, 24), (24, 24), (33, 50))):
    """ROOT/train/CLASS/IMAGE.png with images of different sizes and a gradient (left dark, right bright)."""
    for i, (width, height) in enumerate(sizes):
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        ramp = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
        Image.fromarray(np.stack([ramp, ramp[::-1], ramp], -1)).save(folder / f"img{i}.png")
    return root


def test_a_decoded_folder_serves_batches_and_keeps_the_folder_identity(tmp_path):
    cfg = tiny_config("data.name=imagefolder", f"data.root={image_folder(tmp_path / 'images')}",
                      "data.eval_resize=16", f"data.decode_cache={tmp_path / 'decoded'}").data
    files = build_dataset(dataclasses.replace(cfg, decode_cache=""), "train")
    decoded = build_dataset(cfg, "train")
    assert not files.in_memory and decoded.in_memory
    assert decoded.identity == files.identity and list(decoded.labels) == list(files.labels)
    batch = decoded.batch(np.arange(len(decoded)))
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.uint8
    assert (batch[:, 0, :, -1].float().mean() > batch[:, 0, :, 0].float().mean() + 100)  # the gradient survived
    (cached,) = list((tmp_path / "decoded").glob("*.npy"))
    stamp = cached.stat().st_mtime_ns
    assert torch.equal(build_dataset(cfg, "train").batch(np.arange(4)), batch)  # reused, not decoded again
    assert cached.stat().st_mtime_ns == stamp
    with pytest.raises(TypeError):
        files.batch(np.arange(2))


@pytest.mark.parametrize("extra, message", [
    (("data.augment_on=sideways",), "data.augment_on must be one of auto, device, workers"),
    (("data.name=imagefolder", "data.augment_on=device"), "decode it once with --set data.decode_cache=DIR"),
])
def test_bad_augmentation_placement_is_refused_in_one_line(tmp_path, capsys, extra, message, bingo_logger_guard):
    from bingo.cli import main
    from conftest import tiny_sets

    root = image_folder(tmp_path / "images", sizes=[(20, 20)] * 40)
    code = main(["distill", "--method", "moco", "--out", str(tmp_path / "run"),
                 *tiny_sets(f"data.root={root}", "data.eval_resize=16", *extra)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method, count, needs_bags", [("moco", 2, False), ("disco", 2, False), ("seed", 1, False),
                                                       ("compress-2q", 1, False), ("simreg", 1, False),
                                                       ("bingo", 4, True)])
def test_each_method_owns_its_view_plan_on_both_data_paths(cfg, train, bags, method, count, needs_bags):
    from bingo.methods import CLASSES

    plan = CLASSES[method].views
    assert (plan.count, plan.needs_bags) == (count, needs_bags)
    sample = plan.per_image(train, moco_v2_transform(cfg.data, cfg.augment), bags if needs_bags else None)[3]
    assert len(sample[0]) == count and sample[2] == 3  # the views, then the label and the image's index
    assert (len(sample) == 4 and sample[3] in bags.neighbours[3]) == needs_bags  # the bag member's index
    batch = plan.batches(train, bags if needs_bags else None, None, 1).__getitems__([3, 5])
    images = batch[:2] if needs_bags else batch[:1]  # uint8 anchors (and positives), augmented on the device
    assert all(image.dtype == torch.uint8 and image.shape[0] == 2 for image in images)


def test_scikit_learns_digits_are_a_real_data_set_split_in_halves_offline():
    from bingo.config import DataConfig

    gray = DataConfig(name="digits", channels=1, mean=[0.5], std=[0.5])
    train, test = (build_dataset(gray, split) for split in ("labeled", "test"))
    assert (len(train), len(test)) == (898, 899) and train.name == "digits"
    assert train.batch(np.arange(4)).shape == (4, 1, 8, 8) and train.batch(np.arange(len(train))).max() == 255
    assert sorted(collections.Counter(test.labels.tolist())) == list(range(10))
    rgb = build_dataset(DataConfig(name="digits", channels=3, mean=[0.5] * 3, std=[0.5] * 3), "test")
    assert rgb.batch(np.arange(2)).shape == (2, 3, 8, 8) and np.array_equal(rgb.labels, test.labels)
