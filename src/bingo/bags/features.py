"""Frozen backbone features of a whole data set, L2-normalised: in memory, or a .npy file every process writes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from bingo.config import AugmentConfig, DataConfig, TrainerConfig
from bingo.data.augment import PARAMS, BatchAugment
from bingo.data.datasets import ImageDataset
from bingo.data.transforms import eval_transform, moco_v2_transform
from bingo.data.views import ImageBatches, Views, as_batch
from bingo.errors import UserError
from bingo.models.checkpoints import ARRAY_ERRORS, array_error, atomic_write
from bingo.models.encoder import Encoder
from bingo.training import lightning_precision


def device() -> torch.device:
    """The accelerator to run inference on: CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Embedder(L.LightningModule):
    """Inference only: L2-normalised pooled backbone features of each batch, with the images' indices."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def predict_step(self, batch: tuple, batch_idx: int) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        """((B, D) normalised features,) and the (B,) data set indices they belong to."""
        (images,), _, indices = batch
        return (F.normalize(self.encoder.features(images).float(), dim=1),), indices


class _TeacherViews(L.LightningModule):
    """Inference only: the teacher's outputs on `views` augmented views of each image, and those views' parameters."""

    def __init__(self, network: torch.nn.Module, augment: BatchAugment, views: int):
        super().__init__()
        self.network, self.augment, self.views = network, augment, views

    def predict_step(self, batch: tuple, batch_idx: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """((B, V, D) outputs, (B, V, P) view parameters) and the (B,) data set indices they belong to."""
        images, _, indices = batch
        params = torch.stack([self.augment.draw(len(images), *images.shape[-2:], images.device)
                              for _ in range(self.views)], 1)  # (B, V, P)
        params = params.half().float()  # as stored: the student's replay sees exactly the teacher's view
        views = self.augment.apply(images.repeat(self.views, 1, 1, 1), params.transpose(0, 1).flatten(0, 1))
        outputs = self.network(views).float().unflatten(0, (self.views, len(images))).transpose(0, 1)
        return (outputs, params), indices


class _RowWriter(BasePredictionWriter):
    """Writes output `column` of each batch into its rows of one array: in memory, or a `.npy` file all ranks share.

    Rank 0 creates the file under a temporary name; every rank writes its own rows (DDP shards the
    images); rank 0 renames it into place once all ranks are done, so a reader never sees half a file.
    """

    def __init__(self, shape: tuple[int, ...], dtype: str, path: Path | None, column: int = 0,
                 blank: Callable[[], list[int]] = list):
        super().__init__("batch")
        self.shape, self.dtype, self.path, self.column = shape, dtype, path, column
        self.blank = blank  # the rows left at zero: images that could not be read (another one took their place)
        self.rows: np.ndarray | None = None if path else np.empty(shape, dtype)
        self.tmp = None if path is None else path.with_name(f".{path.name}.partial")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Open the shared file (rank 0 creates it first)."""
        if self.path is None:
            return
        if trainer.is_global_zero:
            np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=self.shape).flush()
        trainer.strategy.barrier("features-created")
        self.rows = np.load(self.tmp, mmap_mode="r+")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: tuple,
                           batch_indices: object, batch: object, batch_idx: int, dataloader_idx: int) -> None:
        """Store one batch's rows at its images' indices."""
        outputs, indices = prediction
        self.rows[indices.cpu().numpy()] = outputs[self.column].cpu().numpy().astype(self.dtype)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A failed run leaves no partial file behind (and a complete file from before untouched)."""
        self.rows = None
        if self.tmp is not None and trainer.is_global_zero:
            self.tmp.unlink(missing_ok=True)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Blank the rows of unreadable images; flush; rank 0 moves the complete file into place."""
        if self.path is None:
            self.rows[self.blank()] = 0
            return
        self.rows.flush()
        self.rows = None
        trainer.strategy.barrier("features-written")
        if trainer.is_global_zero:
            blank = self.blank()
            if blank:
                rows = np.load(self.tmp, mmap_mode="r+")
                rows[blank] = 0
                rows.flush()
                del rows
            os.replace(self.tmp, self.path)


def extract_features(encoder: Encoder, dataset: ImageDataset, data: DataConfig, batch_size: int,
                     run: TrainerConfig | None = None, path: Path | None = None, dtype: str = "float32",
                     progress: bool = True) -> np.ndarray:
    """(N, D) L2-normalised pooled backbone features under the evaluation transform.

    With `path`, written to that `.npy` file by every process of a distributed job (`run` says which
    devices) and returned memory-mapped; without, computed by this process and returned in memory.
    """
    loader = DataLoader(Views(dataset, eval_transform(data), 1), batch_size=batch_size, shuffle=False,
                        num_workers=data.num_workers)
    was_training = encoder.training
    (rows,) = predict_rows(_Embedder(encoder.eval()), loader, [((len(dataset), encoder.feature_dim), dtype, path)],
                           run, progress, blank=lambda: sorted(dataset.unreadable()))
    encoder.train(was_training)
    return rows


def teacher_views(teacher: Encoder, layer: str, dataset: ImageDataset, data: DataConfig, augment: AugmentConfig,
                  views: int, batch_size: int, run: TrainerConfig, outputs: Path, params: Path,
                  progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's outputs on `views` augmented views of each image, and the views' parameters, into two files.

    layer `embedding`: (N, V, D) normalised embeddings; `features`: (N, V, F) pooled backbone features;
    both float16. Parameters: (N, V, P) float16 rows of `BatchAugment.draw`, from which `BatchAugment.apply`
    rebuilds each view exactly. The images are augmented in batches on the device, as in training.
    """
    network, dim = (teacher, teacher.embed_dim) if layer == "embedding" else (teacher.backbone, teacher.feature_dim)
    loader = DataLoader(ImageBatches(dataset), batch_size=batch_size, shuffle=False, collate_fn=as_batch)
    module = _TeacherViews(network.eval(), BatchAugment(data, augment), views)
    columns = [((len(dataset), views, dim), "float16", outputs), ((len(dataset), views, PARAMS), "float16", params)]
    return tuple(predict_rows(module, loader, columns, run, progress))


def predict_rows(module: L.LightningModule, loader: DataLoader, columns: list[tuple[tuple[int, ...], str, Path | None]],
                 run: TrainerConfig | None, progress: bool, blank: Callable[[], list[int]] = list) -> list[np.ndarray]:
    """Run `module.predict_step` over `loader`; output i of its (outputs, indices) fills array i of `columns`.

    Each column is (shape, dtype, path). With a path, the array is written to that `.npy` file by every
    process of a distributed job (`run` says which devices) and returned memory-mapped; without, it is
    computed by this process and returned in memory. The rows `blank` lists at the end are zero.
    """
    run = run or TrainerConfig(accelerator="auto", devices=1)
    on_disk = all(path is not None for _, _, path in columns)
    writers = [_RowWriter(shape, dtype, path, i, blank) for i, (shape, dtype, path) in enumerate(columns)]
    trainer = L.Trainer(accelerator=run.accelerator, devices=run.devices if on_disk else 1,
                        num_nodes=run.num_nodes if on_disk else 1, strategy=run.strategy if on_disk else "auto",
                        precision=lightning_precision(run), logger=False,
                        callbacks=list(writers),  # a copy: Lightning adds its progress bar to the list it is given
                        enable_progress_bar=progress,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.predict(module, loader, return_predictions=False)
    return [writer.rows if path is None else np.load(path, mmap_mode="r")
            for writer, (_, _, path) in zip(writers, columns, strict=True)]


@torch.no_grad()
def calibrate_batchnorm(encoder: Encoder, dataset: ImageDataset, data: DataConfig, augment: AugmentConfig,
                        batches: int = 50, batch_size: int = 128) -> Encoder:
    """Re-estimate BatchNorm running statistics on augmented training batches (no weights change).

    A network trained on the data carries statistics from it; a freshly initialised one carries
    mean 0 / variance 1. Calibrating makes a random-weight reference comparable with trained networks.
    """
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    loader = DataLoader(Views(dataset, moco_v2_transform(data, augment), 1), batch_size=batch_size, shuffle=True,
                        num_workers=data.num_workers)
    encoder.train().to(device())
    for step, ((images,), _, _) in enumerate(loader):
        if step == batches:
            break
        encoder(images.to(device()))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    return encoder.eval()


def pixel_features(dataset: ImageDataset, data: DataConfig) -> np.ndarray:
    """(N, C*H*W) L2-normalised raw pixels under the evaluation transform: the no-learning reference."""
    transform = eval_transform(data)
    pixels = torch.stack([transform(dataset.image(i)).flatten() for i in range(len(dataset))])
    return F.normalize(pixels, dim=1).numpy()


FEATURES_FORMAT = "bingo-features/1"


def write_features_meta(path: Path, meta: dict) -> None:
    """Describe a features file in a .json beside it: data set identity, source network, layer, dtype."""
    text = json.dumps({"format": FEATURES_FORMAT, **meta}, indent=2)
    atomic_write(Path(path).with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))


def read_features_meta(path: Path) -> dict:
    """The .json description of a features file ({} for features computed elsewhere)."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return {}
    refusal, fix = f"{sidecar} is not the description of a features file", "delete it or compute the features again"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise UserError(f"{refusal} ({str(err).splitlines()[0]}); {fix}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{refusal} (not a JSON object); {fix}")
    return meta


def load_features(path: Path, dataset: dict) -> tuple[np.ndarray, dict]:
    """A features file, memory-mapped, checked against the data set it must describe; and its description."""
    if not path.is_file():
        raise UserError(f"features file {path} does not exist; compute it with 'bingo embed'")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(features, np.ndarray):
            raise ValueError("an .npz archive, not one array")
    except ARRAY_ERRORS as err:
        raise UserError(f"{path} is not a .npy array ({array_error(err)}); compute it with 'bingo embed'") from None
    if features.ndim != 2 or features.dtype not in (np.float16, np.float32):
        raise UserError(f"{path} holds a {features.dtype} array of shape {features.shape}; "
                        "features must be (images, dim) float32 or float16: compute them with 'bingo embed'")
    if len(features) != dataset["size"]:
        raise UserError(f"{path} has features of {len(features)} images, but the data set has {dataset['size']}; "
                        "compute them on the same data set (same data.* settings)")
    meta = read_features_meta(path)
    if meta.get("dataset", dataset) != dataset:
        raise UserError(f"{path} was computed on another data set ({meta['dataset']}) than this run's "
                        f"({dataset}); recompute it with 'bingo embed'")
    norms = np.linalg.norm(np.asarray(features[:1000], dtype=np.float32), axis=1)
    norms = np.delete(norms, [i for i in meta.get("unreadable", []) if i < len(norms)])  # zero rows: no image
    if len(norms) and np.abs(norms - 1).max() > 1e-2:
        raise UserError(f"the rows of {path} are not L2-normalised (norms {norms.min():.3g} to {norms.max():.3g}); "
                        "normalise them first")
    return features, meta
