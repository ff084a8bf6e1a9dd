"""Image data sets behind one small interface: `image(i)`, `labels`, `identity`.

Every data set yields PIL images in the channel mode of its config, so the networks see the
size, channels and normalisation the config names, whatever the files hold.
"""

from __future__ import annotations

import abc
import gzip
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bingo.config import DataConfig
from bingo.errors import UserError

SPLITS = ("train", "labeled", "test")  # train: all images usable without labels; labeled: train images with labels
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
SUBSET_SEED = 0  # subsets do not depend on the run's seed, so all runs see the same images
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what PIL raises for a bad file
SUBSTITUTES = 100  # images tried in place of an unreadable one before the folder is deemed unreadable


class ImageDataset(Dataset, abc.ABC):
    """A fixed, ordered list of images with integer labels (-1: unlabeled)."""

    def __init__(self, name: str, split: str, labels: np.ndarray, mode: str, ids: bytes):
        self.name, self.split, self.mode = name, split, mode
        self.labels = np.asarray(labels, dtype=np.int64)
        self._ids = ids
        self.unreadable_log: Path | None = None  # where images that cannot be read are recorded, by every process

    def record_unreadable(self, folder: Path) -> None:
        """Record the images that cannot be read in `folder`/unreadable-SPLIT.tsv (index, file, reason).

        A data set decoded into a cache keeps the record made when it was decoded.
        """
        if self.unreadable_log is None:
            self.unreadable_log = Path(folder) / f"unreadable-{self.split}.tsv"

    def unreadable(self) -> dict[int, str]:
        """The images found unreadable so far, by every process: index -> 'file (reason)'."""
        if self.unreadable_log is None or not self.unreadable_log.is_file():
            return {}
        lines = self.unreadable_log.read_text(errors="replace").splitlines()
        return {int(index): f"{file} ({reason})" for index, file, reason in
                (line.split("\t", 2) for line in lines if line.count("\t") >= 2)}

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def image(self, index: int) -> Image.Image:
        """The image at `index`, in the configured channel mode."""

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.image(index), int(self.labels[index])

    @property
    def identity(self) -> dict:
        """What identifies this data set and its ordering (stored with bags and checked against them)."""
        digest = hashlib.sha256(self._ids + self.labels.tobytes()).hexdigest()[:16]
        return {"name": self.name, "split": self.split, "size": len(self), "fingerprint": digest}

    @abc.abstractmethod
    def subset(self, indices: np.ndarray) -> ImageDataset:
        """The images at `indices`, in that order."""

    in_memory = False  # whether `batch` can serve whole batches of uint8 images (the on-device augmentation path)

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """The images at `indices` as one uint8 tensor (B, C, H, W) in the configured channel mode."""
        raise TypeError(f"{type(self).__name__} serves images one by one (their sizes differ); use image()")


class ArrayImages(ImageDataset):
    """Images held as one uint8 array (N, H, W) or (N, H, W, C), in memory or memory-mapped from a .npy file.

    `ids` identifies the images (default: a hash of the pixels; a decoded folder keeps its files' identity).
    """

    def __init__(self, name: str, split: str, pixels: np.ndarray, labels: np.ndarray, mode: str,
                 ids: bytes | None = None):
        self.pixels = pixels if isinstance(pixels, np.memmap) else np.ascontiguousarray(pixels)
        super().__init__(name, split, labels, mode, ids if ids is not None else hashlib.sha256(self.pixels).digest())

    in_memory = True

    def image(self, index: int) -> Image.Image:
        """The image at `index`, in the configured channel mode."""
        return Image.fromarray(self.pixels[index]).convert(self.mode)

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """The images at `indices` as one uint8 tensor (B, C, H, W) in the configured channel mode.

        Converted as PIL's `convert` does: RGB to L by ITU-R 601-2 luma with PIL's integer rounding.
        """
        pixels = torch.from_numpy(np.ascontiguousarray(self.pixels[np.asarray(indices)]))
        pixels = pixels.unsqueeze(-1) if pixels.ndim == 3 else pixels  # (B, H, W, channels in the array)
        if self.mode == "L" and pixels.shape[-1] == 3:
            weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32)
            pixels = ((pixels.int() * weights).sum(-1, keepdim=True) + 0x8000).bitwise_right_shift(16).byte()
        elif self.mode == "RGB" and pixels.shape[-1] == 1:
            pixels = pixels.expand(-1, -1, -1, 3)
        return pixels.permute(0, 3, 1, 2).contiguous()

    def subset(self, indices: np.ndarray) -> ArrayImages:
        """The images at `indices`, in that order."""
        return ArrayImages(self.name, self.split, self.pixels[indices], self.labels[indices], self.mode)


class FileImages(ImageDataset):
    """Images read from files on demand (ImageFolder trees: ImageNet and the like)."""

    def __init__(self, name: str, split: str, root: Path, files: list[str], labels: np.ndarray, mode: str):
        self.root, self.files = root, files
        super().__init__(name, split, labels, mode, "\n".join(files).encode())

    def image(self, index: int) -> Image.Image:
        """The image at `index` in the configured channel mode; if it cannot be read, it is recorded and the next
        readable image takes its place."""
        for offset in range(SUBSTITUTES):
            candidate = (index + offset) % len(self)
            try:
                return self.read(candidate)
            except UNREADABLE as err:
                self._record(candidate, err)
        raise UserError(f"{SUBSTITUTES} images in a row from {self.root / self.files[index]} on cannot be read as "
                        "images; check data.root")

    def read(self, index: int) -> Image.Image:
        """The image at `index` in the configured channel mode; raises what PIL raises for a file it cannot read."""
        with Image.open(self.root / self.files[index]) as img:
            return img.convert(self.mode)

    def _record(self, index: int, err: Exception) -> None:
        """Append one line for an unreadable image to the log (each line written whole, so processes can share it)."""
        if self.unreadable_log is None:
            return
        path = self.root / self.files[index]
        reason = " ".join(f"{type(err).__name__}: {err}".replace(f"'{path}'", "the file").split())
        with open(self.unreadable_log, "a") as log:
            log.write(f"{index}\t{self.files[index]}\t{reason}\n")

    def subset(self, indices: np.ndarray) -> FileImages:
        """The images at `indices`, in that order."""
        return FileImages(self.name, self.split, self.root, [self.files[i] for i in indices],
                          self.labels[indices], self.mode)


DIGITS_TRAIN = 898  # scikit-learn's digits: the first half trains


def build_dataset(cfg: DataConfig, split: str) -> ImageDataset:
    """The data set named by `cfg` for one split, subset as configured."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    if cfg.channels not in (1, 3):
        raise UserError(f"data.channels must be 1 or 3, got {cfg.channels}")
    if len(cfg.mean) != cfg.channels or len(cfg.std) != cfg.channels:
        raise UserError(f"data.mean and data.std need {cfg.channels} values (one per channel)")
    loaders = {"fashion-mnist": _fashion_mnist, "cifar10": _cifar, "cifar100": _cifar, "stl10": _stl10,
               "digits": _digits, "imagefolder": _image_folder, "generated": _generated}
    if cfg.name not in loaders:
        raise UserError(f"unknown data set '{cfg.name}'; choose one of: {', '.join(loaders)}")
    dataset = loaders[cfg.name](cfg, split, "L" if cfg.channels == 1 else "RGB")
    size = cfg.test_subset if split == "test" else cfg.train_subset
    if 0 < size < len(dataset):
        picked = np.random.default_rng(SUBSET_SEED).permutation(len(dataset))[:size]
        dataset = dataset.subset(np.sort(picked))
    return dataset


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not, as a uint8 array."""
    with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
        raw = f.read()
    ndim = raw[3]
    shape = np.frombuffer(raw, ">u4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_fashion_mnist(root: Path) -> Path | None:
    """The folder holding Fashion-MNIST's IDX files, searched in the usual places."""
    for folder in (root / "FashionMNIST" / "raw", root / "fashion-mnist", root, FASHION_MNIST_DEBIAN):
        if all(_idx_file(folder, stem) for stem in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
            return folder
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_mnist(cfg: DataConfig, split: str, mode: str) -> ImageDataset:
    root = Path(cfg.root)
    folder = find_fashion_mnist(root)
    if folder is None and cfg.download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), download=True)
        except Exception:  # noqa: BLE001 - any failure means: offline or blocked
            pass
        folder = find_fashion_mnist(root)
    if folder is None:
        raise UserError(
            f"Fashion-MNIST not found under {root} or {FASHION_MNIST_DEBIAN}: as root run "
            "'apt-get install dataset-fashion-mnist', or go online and rerun (torchvision downloads it), "
            f"or put the four IDX files (train-images-idx3-ubyte.gz, ...) into {root}/fashion-mnist")
    prefix = "t10k" if split == "test" else "train"
    pixels = _read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    return ArrayImages("fashion-mnist", split, pixels, labels, mode)


def _torchvision(factory: Callable, cfg: DataConfig, **kwargs: object) -> object:
    try:
        return factory(cfg.root, download=cfg.download, **kwargs)
    except RuntimeError as err:
        raise UserError(f"data set '{cfg.name}' not found under {cfg.root} ({str(err).splitlines()[0]}); "
                        "set data.root to where it lies, or data.download=true when online") from None


def _cifar(cfg: DataConfig, split: str, mode: str) -> ImageDataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    data = _torchvision(CIFAR10 if cfg.name == "cifar10" else CIFAR100, cfg, train=split != "test")
    return ArrayImages(cfg.name, split, data.data, np.array(data.targets), mode)


def _digits(cfg: DataConfig, split: str, mode: str) -> ImageDataset:
    """scikit-learn's handwritten digits (UCI, 1,797 images of 8 x 8 pixels in 17 grey levels), shipped with the
    package, so available offline; the first 898 images train, the other 899 test (the split of scikit-learn's own
    digits example)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    part = slice(DIGITS_TRAIN, None) if split == "test" else slice(0, DIGITS_TRAIN)
    return ArrayImages("digits", split, pixels[part], digits.target[part], mode)


def _stl10(cfg: DataConfig, split: str, mode: str) -> ImageDataset:
    from torchvision.datasets import STL10

    stl_split = {"train": "train+unlabeled", "labeled": "train", "test": "test"}[split]
    data = _torchvision(STL10, cfg, split=stl_split)
    return ArrayImages("stl10", split, data.data.transpose(0, 2, 3, 1), data.labels, mode)


def _image_folder(cfg: DataConfig, split: str, mode: str) -> ImageDataset:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(cfg.root)
    names = ("val", "test") if split == "test" else ("train",)
    folder = next((root / n for n in names if (root / n).is_dir()), None)
    if folder is None:
        raise UserError(f"image folder {root} has no {' or '.join(names)}/ subfolder (expected the "
                        "ImageNet layout: ROOT/train/CLASS/IMAGE and ROOT/val/CLASS/IMAGE)")
    classes, class_to_idx = find_classes(str(folder))
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    files = [str(Path(path).relative_to(folder)) for path, _ in samples]
    images = FileImages("imagefolder", split, folder, files, np.array([label for _, label in samples]), mode)
    return decoded(images, Path(cfg.decode_cache), cfg.eval_resize, cfg.num_workers) if cfg.decode_cache else images


class _Decoder(Dataset):
    """Each image of a folder as a uint8 array (side, side, C): shorter side resized to `side`, centre-cropped."""

    def __init__(self, images: FileImages, side: int):
        from torchvision import transforms as T

        self.images, self.side = images, side
        self.transform = T.Compose([T.Resize(side), T.CenterCrop(side)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.transform(self.images.image(index))).reshape(self.side, self.side, -1)


def decoded(images: FileImages, folder: Path, side: int, workers: int) -> ArrayImages:
    """`images` decoded once into a memory-mapped uint8 .npy in `folder` (reused when present): batches for the device.

    Each image's shorter side is resized to `side` (data.eval_resize) and the centre square kept, so the
    training crops are drawn from that square. The file is named by the images' identity and `side`.
    """
    from torch.utils.data import DataLoader

    path = folder / f"{images.split}-{images.identity['fingerprint']}-{side}{images.mode}.npy"
    unreadable = path.with_suffix(".unreadable.tsv")  # the images that could not be read, if any
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        channels = 1 if images.mode == "L" else 3
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # processes of one job decode side by side
        images.unreadable_log = partial.with_suffix(".unreadable.tsv")  # an unreadable image: the next one's pixels
        images.unreadable_log.unlink(missing_ok=True)
        rows = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(images), side, side, channels))
        loader = DataLoader(_Decoder(images, side), batch_size=64, num_workers=workers)
        start = 0
        for batch in loader:
            rows[start:start + len(batch)] = batch.numpy()
            start += len(batch)
        rows.flush()
        del rows
        if images.unreadable_log.is_file():
            os.replace(images.unreadable_log, unreadable)
        os.replace(partial, path)
    pixels = np.load(path, mmap_mode="r")
    array = ArrayImages(images.name, images.split, pixels, images.labels, images.mode, images._ids)
    array.unreadable_log = unreadable
    return array


def _generated(cfg: DataConfig, split: str, mode: str) -> ImageDataset:
    """Class-structured synthetic images: a smooth template per class, shifted, scaled and noised."""
    size, classes = cfg.image_size, cfg.generated_classes
    count = cfg.generated_test_size if split == "test" else cfg.generated_train_size
    rng = np.random.default_rng(1234)
    coarse = rng.uniform(0, 255, (classes, 3, 4, 4))
    templates = np.stack([np.array(Image.fromarray(c.transpose(1, 2, 0).astype(np.uint8)).resize(
        (size, size), Image.BICUBIC)) for c in coarse]).astype(np.float32)  # (classes, size, size, 3)
    rng = np.random.default_rng({"train": 1, "labeled": 1, "test": 2}[split])
    labels = rng.integers(0, classes, count)
    shifts = rng.integers(-size // 8, size // 8 + 1, (count, 2))
    pixels = np.empty((count, size, size, 3), np.uint8)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts, strict=True)):
        image = np.roll(templates[label], (dy, dx), axis=(0, 1)) * rng.uniform(0.7, 1.1)
        pixels[i] = np.clip(image + rng.normal(0, 20, image.shape), 0, 255)
    return ArrayImages("generated", split, pixels, labels, mode)
