"""Linear probe on pre-extracted frozen features, trained with Lightning (SGD, cosine, no weight decay)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bingo.methods.base import lr_factor


class LinearProbe(L.LightningModule):
    """One linear layer on standardised features; top-1/top-5 on a test set."""

    def __init__(self, dim: int, classes: int, lr: float, epochs: int):
        super().__init__()
        self.classifier = nn.Linear(dim, classes)
        self.lr, self.epochs = lr, epochs

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the linear classifier."""
        features, labels = batch
        loss = F.cross_entropy(self.classifier(features), labels)
        self.log("probe/loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> dict:
        """SGD momentum 0.9, no weight decay, cosine per step."""
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, 0, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def linear_probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                          test_labels: np.ndarray, epochs: int, lr: float, batch_size: int,
                          seed: int = 0) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) of a linear classifier trained on frozen features."""
    L.seed_everything(seed, verbose=False)
    mean, std = train_features.mean(0), train_features.std(0) + 1e-6
    train_x = torch.from_numpy((train_features - mean) / std).float()
    test_x = torch.from_numpy((test_features - mean) / std).float()
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = LinearProbe(train_x.shape[1], classes, lr, epochs)
    loader = DataLoader(TensorDataset(train_x, torch.from_numpy(train_labels)), batch_size=batch_size,
                        shuffle=True, drop_last=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(probe, loader)
    with torch.no_grad():
        ranked = probe.classifier(test_x).topk(min(5, classes), dim=1).indices.numpy()
    truth = test_labels[:, None]
    return {"top1": 100 * float((ranked[:, :1] == truth).any(1).mean()),
            "top5": 100 * float((ranked == truth).any(1).mean())}
