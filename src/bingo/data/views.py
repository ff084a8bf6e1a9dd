"""Training and evaluation views of an ImageDataset: augmented pairs, bag quadruples, labeled images; and the
view plans a method owns (what one training sample is)."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from bingo.bags.files import Bags
from bingo.config import AugmentConfig
from bingo.data.datasets import ImageDataset
from bingo.data.keys import TeacherOutputs
from bingo.data.order import batch_generator


class SeededItems(Dataset):
    """A data set of per-image samples whose random draws, for a batch that carries a seed, come from that seed.

    (`order.SeededBatch`: the sample a resumed run loads is the one it would have had, whichever
    process loads it and however far the loader had read ahead.)
    """

    def __getitems__(self, indices: list[int]) -> list:
        """The samples of one batch."""
        seed = getattr(indices, "seed", None)
        if seed is None:
            return [self[i] for i in indices]
        with torch.random.fork_rng(devices=[]):  # torch's global generator is left as it was
            torch.manual_seed(seed)
            return [self[i] for i in indices]


class Views(SeededItems):
    """Each image as `n_views` independent draws of `transform`: (views, label, index)."""

    def __init__(self, base: ImageDataset, transform: Callable, n_views: int):
        self.base, self.transform, self.n_views = base, transform, n_views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int, int]:
        image = self.base.image(index)
        return [self.transform(image) for _ in range(self.n_views)], int(self.base.labels[index]), index


class BagViews(SeededItems):
    """BINGO's sample: an anchor and a positive drawn uniformly from its bag (never the anchor itself).

    Returns ([t1(a), t2(a), t3(p), t4(p)], label of a, index of a, index of p).
    """

    def __init__(self, base: ImageDataset, bags: Bags, transform: Callable):
        if len(bags) != len(base):
            raise ValueError(f"{len(bags)} bags for {len(base)} images")
        self.base, self.bags, self.transform = base, bags, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int, int, int]:
        positive = self.bags.positive(index)
        anchor_image, positive_image = self.base.image(index), self.base.image(positive)
        views = [self.transform(anchor_image), self.transform(anchor_image),
                 self.transform(positive_image), self.transform(positive_image)]
        return views, int(self.base.labels[index]), index, positive


class Labeled(SeededItems):
    """Each image once through `transform`, with its label: (image, label), for supervised protocols."""

    def __init__(self, base: ImageDataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.base.image(index)), int(self.base.labels[index])


class ImageBatches(Dataset):
    """Whole batches of uint8 images for augmentation on the device (`BatchAugment`), fetched in one indexing.

    A batch is (images (B, C, H, W) uint8, labels, indices); with a teacher cache, `views` distinct
    cached views of each image follow: (..., teacher outputs (B, views, D), view parameters (B, views, P)).
    With `bags`: (anchors, positives, labels, anchor indices, positive indices), each positive drawn
    uniformly from its anchor's bag; with a cache as well, the teacher's output on one cached view of
    each anchor and of each positive follow: (..., anchor keys (B, D), positive keys (B, D)).
    """

    def __init__(self, base: ImageDataset, bags: Bags | None = None, cache: TeacherOutputs | None = None,
                 views: int = 1):
        if bags is not None and len(bags) != len(base):
            raise ValueError(f"{len(bags)} bags for {len(base)} images")
        self.base, self.bags, self.cache, self.views = base, bags, cache, views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> tuple:
        """The batch of `indices` (the DataLoader hands a batch sampler's indices over in one call).

        Its random draws come from the batch's own seed when it carries one (`order.SeededBatch`).
        """
        generator, anchors = batch_generator(indices), np.asarray(indices)
        batch = (self.base.batch(anchors), torch.from_numpy(self.base.labels[anchors]), torch.from_numpy(anchors))
        if self.bags is None:
            return batch if self.cache is None else \
                (*batch, *self.cache.sample_views(anchors, self.views, generator))
        positives = np.array([self.bags.positive(i, generator) for i in anchors])
        images, labels, indices_t = batch
        batch = (images, self.base.batch(positives), labels, indices_t, torch.from_numpy(positives))
        if self.cache is None:
            return batch
        return (*batch, self.cache.sample(anchors, generator), self.cache.sample(positives, generator))


class ViewPlan(abc.ABC):
    """What a method's training step sees of its images: the sample each index gives and its augmented views.

    `count` views per sample; `needs_bags`: a sample is an anchor with a member of its bag; `weak`:
    crop and flip only (no colour jitter, grayscale or blur), as CompRess and SimReg augment.
    """

    count: int
    needs_bags: bool
    weak: bool = False

    def augment(self, augment: AugmentConfig) -> AugmentConfig:
        """The augmentation these views are drawn with: `augment`, or its crop and flip alone when weak."""
        return dataclasses.replace(augment, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0) if self.weak \
            else augment

    @abc.abstractmethod
    def per_image(self, data: ImageDataset, transform: Callable, bags: Bags | None) -> Dataset:
        """The samples, each image augmented by `transform` in the loader's workers."""

    def batches(self, data: ImageDataset, bags: Bags | None, cache: TeacherOutputs | None,
                cached_views: int) -> ImageBatches:
        """The samples as whole uint8 batches, augmented by the method on its device (with a teacher cache's
        `cached_views` outputs per image, when given)."""
        return ImageBatches(data, bags, cache, cached_views)


@dataclass(frozen=True)
class ImageViews(ViewPlan):
    """Each image as `count` independent augmented views (MoCo-v2 and DisCo: 2; SEED, CompRess, SimReg: 1)."""

    count: int
    weak: bool = False
    needs_bags = False

    def per_image(self, data: ImageDataset, transform: Callable, bags: Bags | None = None) -> Dataset:
        """(views, label, index) for each image."""
        return Views(data, transform, self.count)


@dataclass(frozen=True)
class BagPairViews(ViewPlan):
    """BINGO's sample (arXiv 2107.01691, Sec. 3.2): an anchor and a member of its bag, two augmented views of each
    ([t1(a), t2(a), t3(p), t4(p)])."""

    count = 4
    needs_bags = True

    def per_image(self, data: ImageDataset, transform: Callable, bags: Bags | None) -> Dataset:
        """(views, label of a, index of a, index of p) for each anchor a."""
        return BagViews(data, bags, transform)


def as_batch(batch: tuple) -> tuple:
    """The DataLoader's collate function for `ImageBatches`: the data set already returns whole batches."""
    return batch
