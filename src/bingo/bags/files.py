"""Bags as the training side sees them, whichever strategy made them, and the one file format they share.

Two shapes cover every strategy: neighbour bags, an (N, K) array of dataset indices (kNN, random,
student relation), and group bags, a group id per image (k-means clusters, labels). Either way an
anchor's positive is drawn uniformly from its bag, never the anchor itself (except for `self` bags,
whose only member is the anchor).
"""

from __future__ import annotations

import abc
import json
from pathlib import Path

import numpy as np
import torch

from bingo.errors import UserError
from bingo.models.checkpoints import ARRAY_ERRORS, array_error, atomic_write

BAG_FORMAT = "bingo-bags/2"


class Bags(abc.ABC):
    """Every image's bag; `positive(a)` draws a bag member of anchor `a` (torch's RNG, seeded per worker)."""

    arrays: tuple[str, ...] = ()

    def __init__(self, meta: dict):
        self.meta = meta

    def __len__(self) -> int:
        return len(getattr(self, self.arrays[0]))

    @abc.abstractmethod
    def positive(self, anchor: int, generator: torch.Generator | None = None) -> int:
        """One member of `anchor`'s bag, drawn uniformly (from `generator`, else torch's global RNG)."""

    @abc.abstractmethod
    def members(self, anchor: int) -> np.ndarray:
        """All members of `anchor`'s bag, the anchor excluded."""

    @abc.abstractmethod
    def usage(self) -> np.ndarray:
        """(N,) expected number of times each image is drawn as a positive in one epoch."""

    @abc.abstractmethod
    def purity(self, labels: np.ndarray) -> float | None:
        """Share of bag members carrying their anchor's label (mean over anchors); None without labels."""


class NeighbourBags(Bags):
    """Bags of K images each: `neighbours` (N, K) dataset indices, nearest first."""

    arrays = ("neighbours", "similarities")

    def __init__(self, neighbours: np.ndarray, meta: dict, similarities: np.ndarray | None = None):
        super().__init__(meta)
        self.neighbours = np.asarray(neighbours, dtype=np.int64)
        self.similarities = np.full(self.neighbours.shape, np.nan, np.float32) if similarities is None \
            else np.asarray(similarities, dtype=np.float32)
        self._table = torch.from_numpy(self.neighbours)

    def positive(self, anchor: int, generator: torch.Generator | None = None) -> int:
        """One of the anchor's K neighbours, drawn uniformly."""
        return int(self._table[anchor, torch.randint(self._table.shape[1], (), generator=generator)])

    def members(self, anchor: int) -> np.ndarray:
        """The anchor's K neighbours."""
        return self.neighbours[anchor]

    def usage(self) -> np.ndarray:
        """Each image's expected draws per epoch: 1/K for every bag it is in."""
        counts = np.bincount(self.neighbours.ravel(), minlength=len(self.neighbours))
        return counts / self.neighbours.shape[1]

    def purity(self, labels: np.ndarray) -> float | None:
        """Share of neighbours with the anchor's label."""
        return None if (labels < 0).any() else float((labels[self.neighbours] == labels[:, None]).mean())


class GroupBags(Bags):
    """Bags that are groups (clusters, classes): `groups` (N,) ids; a group of one falls back to `fallback`.

    `fallback` (N,) holds, for an image alone in its group, the image to use instead (its nearest
    neighbour); -1 elsewhere.
    """

    arrays = ("groups", "fallback")

    def __init__(self, groups: np.ndarray, meta: dict, fallback: np.ndarray | None = None):
        super().__init__(meta)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.fallback = np.full(len(self.groups), -1, np.int64) if fallback is None else np.asarray(fallback, np.int64)
        self.order = np.argsort(self.groups, kind="stable")  # images sorted by group
        self.sizes = np.bincount(self.groups)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        lonely = self.sizes[self.groups] == 1
        if (self.fallback[lonely] < 0).any():
            raise ValueError("an image alone in its group needs a fallback positive")

    def positive(self, anchor: int, generator: torch.Generator | None = None) -> int:
        """Another member of the anchor's group, drawn uniformly (its fallback if it is alone)."""
        group = self.groups[anchor]
        size = int(self.sizes[group])
        if size == 1:
            return int(self.fallback[anchor])
        start = int(self.starts[group])
        member = int(self.order[start + int(torch.randint(size - 1, (), generator=generator))])
        return int(self.order[start + size - 1]) if member == anchor else member  # uniform over the others

    def members(self, anchor: int) -> np.ndarray:
        """The other members of the anchor's group ([fallback] if it is alone)."""
        group = self.groups[anchor]
        if self.sizes[group] == 1:
            return self.fallback[anchor:anchor + 1]
        members = self.order[self.starts[group]:self.starts[group] + self.sizes[group]]
        return members[members != anchor]

    def usage(self) -> np.ndarray:
        """Each image's expected draws per epoch: one per group of two or more, plus fallbacks."""
        used = (self.sizes[self.groups] > 1).astype(np.float64)
        lonely = self.fallback[self.fallback >= 0]
        return used + np.bincount(lonely, minlength=len(self.groups))

    def purity(self, labels: np.ndarray) -> float | None:
        """Per anchor, the share of its other group members with its label; fallbacks count as one member."""
        if (labels < 0).any():
            return None
        pair = self.groups * (labels.max() + 1) + labels
        _, inverse, counts = np.unique(pair, return_inverse=True, return_counts=True)
        same = counts[inverse]  # images sharing the anchor's group and label, the anchor included
        size = self.sizes[self.groups]
        share = np.where(size > 1, (same - 1) / np.maximum(size - 1, 1),
                         labels[np.maximum(self.fallback, 0)] == labels)
        return float(share.mean())


KINDS = {"neighbours": NeighbourBags, "groups": GroupBags}


def save_bags(path: Path, bags: Bags) -> None:
    """Write bags and their metadata (format, strategy, sizes, data set identity, source) atomically."""
    meta = {"format": BAG_FORMAT, **bags.meta}
    arrays = {name: getattr(bags, name) for name in bags.arrays}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    atomic_write(Path(path), write)


def load_bags(path: Path) -> Bags:
    """Bags from a bag file; one clear line when the file is missing, not a bag file, or not one bag per image."""
    path = Path(path)
    fix = "rebuild it with 'bingo bags'"
    if not path.is_file():
        raise UserError(f"bag file {path} does not exist; build it with 'bingo bags'")
    try:
        stored = np.load(path, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("format") != BAG_FORMAT or meta.get("kind") not in KINDS:
                raise UserError(f"{path} is not a {BAG_FORMAT} bag file (format {meta.get('format')!r}); {fix}")
            kind = KINDS[meta["kind"]]
            first, second = (stored[name] for name in kind.arrays)
            images = meta["dataset"]["size"]
    except (*ARRAY_ERRORS, KeyError, TypeError, AttributeError) as err:  # also a meta that is no JSON object
        raise UserError(f"{path} is not a bingo bag file ({array_error(err)}); {fix}") from None
    members, lowest = (first, 0) if kind is NeighbourBags else (second, -1)  # dataset indices; -1: no fallback
    if first.shape != second.shape or first.ndim != (2 if kind is NeighbourBags else 1) or len(first) != images \
            or members.dtype.kind not in "iu" or members.size and not lowest <= members.min() <= members.max() < images:
        raise UserError(f"{path} is not a bingo bag file (its {kind.arrays[0]} {first.shape} are not one bag of "
                        f"image indices for each of the {images} images it names); {fix}")
    try:
        return kind(first, meta, second)
    except ValueError as err:  # a group bag of one image without a fallback
        raise UserError(f"{path} is not a bingo bag file ({err}); {fix}") from None


def check_bags(path: Path, bags: Bags, dataset: dict, expected: dict) -> None:
    """Refuse bags made for another data set, or whose strategy, K, C or source differ from `expected`.

    `expected` holds what the run asks for of strategy, k and clusters, and the teacher's digest (or None).
    """
    meta = bags.meta
    if meta["dataset"] != dataset:
        raise UserError(f"bag file {path} was built for data set {_describe(meta['dataset'])}, but this run "
                        f"uses {_describe(dataset)}; rebuild the bags with 'bingo bags'")
    for key, flag in (("strategy", "bags.strategy"), ("k", "bags.k"), ("clusters", "bags.clusters")):
        if key in meta and key in expected and meta[key] != expected[key]:
            raise UserError(f"bag file {path} has {key} {meta[key]}, but this run asks for {expected[key]}; "
                            f"drop {flag} from the command and its --config (the bag file says how its bags were "
                            f"made), or rebuild the bags with {flag}={expected[key]}")
    source = meta.get("source", {})
    teacher = expected.get("teacher")
    if source.get("kind") == "teacher" and teacher and source.get("sha256") != teacher:
        raise UserError(f"bag file {path} was built from another teacher ({source.get('path')}, "
                        f"{source.get('sha256')}) than this run's ({teacher}); rebuild the bags with this teacher")


def _describe(identity: dict) -> str:
    return f"{identity['name']}/{identity['split']} ({identity['size']} images, {identity['fingerprint']})"
