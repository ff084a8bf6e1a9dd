"""The online kNN monitor: how good the features of the network being trained are, every N epochs."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from bingo.config import Config
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.data.transforms import eval_transform
from bingo.data.views import Labeled
from bingo.eval.knn import knn_accuracy

SAMPLE_SEED = 0  # the same bank and queries at every epoch and in every run


class KnnMonitor(Callback):
    """Every `monitor.every_n_epochs` epochs, kNN accuracy of the student's backbone features (rank 0).

    The bank is a seeded sample of labeled training images, the queries a seeded sample of the test
    split; logged as monitor/knn_top1 and monitor/knn_top5 (%) beside the losses.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.bank = _sample(build_dataset(cfg.data, "labeled"), cfg.monitor.bank_size)
        self.queries = _sample(build_dataset(cfg.data, "test"), cfg.monitor.queries)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Measure and log, on the epochs the schedule names."""
        monitor = self.cfg.monitor
        if (trainer.current_epoch + 1) % monitor.every_n_epochs or not trainer.is_global_zero:
            return
        with torch.random.fork_rng(devices=[]):  # the data loaders draw seeds: training's randomness stays as is
            bank, queries = (self._features(pl_module.student, split) for split in (self.bank, self.queries))
        accuracy = knn_accuracy(bank, self.bank.labels, queries, self.queries.labels, [monitor.k],
                                monitor.temperature)[monitor.k]
        for name, value in accuracy.items():
            pl_module.log(f"monitor/knn_{name}", value, rank_zero_only=True)

    @torch.no_grad()
    def _features(self, encoder: torch.nn.Module, dataset: ImageDataset) -> np.ndarray:
        """(N, D) L2-normalised backbone features in eval mode; every module's mode restored afterwards."""
        modes = {module: module.training for module in encoder.modules()}
        encoder.eval()
        device = next(encoder.parameters()).device
        loader = DataLoader(Labeled(dataset, eval_transform(self.cfg.data)), batch_size=self.cfg.eval.batch_size,
                            num_workers=self.cfg.data.num_workers)
        features = [F.normalize(encoder.features(images.to(device)).float(), dim=1).cpu() for images, _ in loader]
        for module, mode in modes.items():
            module.train(mode)
        return torch.cat(features).numpy()


def _sample(dataset: ImageDataset, size: int) -> ImageDataset:
    """A seeded random subset of `size` images (all when the data set is not larger)."""
    if len(dataset) <= size:
        return dataset
    return dataset.subset(np.sort(np.random.default_rng(SAMPLE_SEED).permutation(len(dataset))[:size]))
