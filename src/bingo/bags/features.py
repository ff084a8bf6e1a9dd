"""Frozen backbone features of a whole data set, L2-normalised, with a progress bar."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from bingo.config import AugmentConfig, DataConfig
from bingo.data.datasets import ImageDataset
from bingo.data.transforms import eval_transform, moco_v2_transform
from bingo.data.views import Views
from bingo.models.encoder import Encoder


def device() -> torch.device:
    """The accelerator to run inference on: CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def extract_features(encoder: Encoder, dataset: ImageDataset, data: DataConfig, batch_size: int,
                     desc: str = "features", progress: bool = True) -> np.ndarray:
    """(N, D) float32 L2-normalised pooled backbone features under the evaluation transform."""
    run_on = device()
    was_training = encoder.training
    encoder.eval().to(run_on)
    loader = DataLoader(Views(dataset, eval_transform(data), 1), batch_size=batch_size,
                        num_workers=data.num_workers, shuffle=False)
    chunks = []
    for (images,), _, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
        chunks.append(F.normalize(encoder.features(images.to(run_on)).float(), dim=1).cpu())
    encoder.train(was_training)
    return torch.cat(chunks).numpy()


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
