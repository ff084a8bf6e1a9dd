"""A linear classifier on a backbone, trained with Lightning: the linear, semi-supervised and transfer protocols."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from bingo.config import Config, OptimConfig
from bingo.data.datasets import ImageDataset
from bingo.data.transforms import eval_transform, linear_train_transform
from bingo.data.views import Labeled
from bingo.errors import UserError
from bingo.methods.base import freeze, lr_factor
from bingo.models.encoder import Encoder
from bingo.training import LAST_CHECKPOINT, fit, is_rank_zero

LINEAR_VARIANTS = ("paper", "fast", "lbfgs")
FEATURE_VARIANTS = ("fast", "lbfgs")  # the variants that train on pre-extracted features
FAST_LR = 0.1  # per 256 images, on standardised features


class Classifier(L.LightningModule):
    """A linear layer on `backbone` ((B, C, H, W) -> (B, D)): frozen, or fine-tuned when `backbone_lr` > 0.

    Without a backbone the inputs are (B, D) features already. SGD momentum 0.9, cosine per step;
    learning rates are per 256 images. Reports top-1 and top-5 accuracy (%) on the test set.
    """

    def __init__(self, backbone: nn.Module | None, dim: int, classes: int, head_lr: float, batch_size: int,
                 backbone_lr: float = 0.0, weight_decay: float = 0.0):
        super().__init__()
        self.backbone = backbone or nn.Identity()
        self.fine_tune = backbone_lr > 0
        if self.fine_tune:
            self.backbone.requires_grad_(True).train()
        else:
            freeze(self.backbone)  # eval mode: BatchNorm keeps its running statistics
        self.classifier = nn.Linear(dim, classes)
        scale = batch_size / 256
        self.head_lr, self.backbone_lr, self.weight_decay = head_lr * scale, backbone_lr * scale, weight_decay
        self.top1 = MulticlassAccuracy(classes, top_k=1, average="micro")
        self.top5 = MulticlassAccuracy(classes, top_k=min(5, classes), average="micro")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes)."""
        with torch.set_grad_enabled(self.fine_tune and torch.is_grad_enabled()):
            features = self.backbone(inputs)
        return self.classifier(features)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the classifier."""
        inputs, labels = batch
        loss = F.cross_entropy(self(inputs), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(labels))
        return loss

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        """Accumulate top-1 and top-5 hits."""
        inputs, labels = batch
        logits = self(inputs)
        self.top1.update(logits, labels)
        self.top5.update(logits, labels)
        self.log_dict({"test/top1": self.top1, "test/top5": self.top5}, on_epoch=True, batch_size=len(labels))

    def configure_optimizers(self) -> dict:
        """SGD momentum 0.9 on the head (and the backbone when fine-tuned), cosine per step."""
        groups = [{"params": self.classifier.parameters(), "lr": self.head_lr}]
        if self.fine_tune:
            groups.append({"params": self.backbone.parameters(), "lr": self.backbone_lr})
        optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, 0, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def train_and_test(classifier: Classifier, train: Dataset, test: Dataset, cfg: Config, epochs: int,
                   batch_size: int, out: Path) -> dict[str, float]:
    """Fit `classifier` on `train`, then its top-1 / top-5 accuracy (%) on `test`.

    Logs and checkpoints go into `out`; a checkpoint found there (an interrupted evaluation) is resumed,
    and removed once the accuracy is known.
    """
    trainer = fit(classifier, train, cfg, OptimConfig(epochs=epochs, batch_size=batch_size), out, resume=True,
                  monitor=False, drop_last=False)
    per_process = max(1, batch_size // trainer.world_size)
    workers = 0 if isinstance(test, TensorDataset) else cfg.data.num_workers  # features in memory need no loader
    result = trainer.test(classifier, DataLoader(test, batch_size=per_process, num_workers=workers), verbose=False)
    if is_rank_zero():
        (out / LAST_CHECKPOINT).unlink(missing_ok=True)
    return {"top1": 100 * float(result[0]["test/top1"]), "top5": 100 * float(result[0]["test/top5"])}


def paper_lr(arch: str) -> float:
    """The linear protocol's learning rate per 256 images (BINGO, arXiv 2107.01691): 30 for ResNets, 3 for others."""
    return 30.0 if arch.startswith("resnet") else 3.0


def check_linear(cfg: Config, network: bool) -> None:
    """Refuse linear settings that cannot run (for a network, or raw pixels when `network` is False)."""
    variant = cfg.eval.linear.variant
    if variant not in LINEAR_VARIANTS:
        raise UserError(f"eval.linear.variant must be one of {', '.join(LINEAR_VARIANTS)}, not '{variant}'")
    if variant == "paper" and not network:
        raise UserError("raw pixels have no backbone for the paper's linear protocol; set eval.linear.variant=fast")


def linear_eval(cfg: Config, encoder: Encoder | None, train: ImageDataset, test: ImageDataset, out: Path,
                features: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float | str]:
    """The linear protocol (cfg.eval.linear): top-1 and top-5 accuracy (%) of a linear layer on frozen features.

    `paper`: augmented images through the frozen backbone, as in BINGO's protocol (arXiv 2107.01691).
    `fast` and `lbfgs`: on `features` (train, test), the L2-normalised backbone features of the evaluation
    crops, standardised; `fast` trains with SGD, `lbfgs` fits the layer to convergence.
    """
    check_linear(cfg, encoder is not None)
    linear = cfg.eval.linear
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    if linear.variant in FEATURE_VARIANTS:
        train_x, test_x = features
        mean, std = train_x.mean(0), train_x.std(0) + 1e-6
        train_data, test_data = (TensorDataset(torch.from_numpy((x - mean) / std).float(), torch.from_numpy(y))
                                 for x, y in ((train_x, train.labels), (test_x, test.labels)))
        if linear.variant == "lbfgs":
            return {**lbfgs_probe(*train_data.tensors, *test_data.tensors, classes, linear.weight_decay,
                                  linear.epochs), "variant": "lbfgs"}
        classifier = Classifier(None, train_x.shape[1], classes, linear.lr or FAST_LR, linear.batch_size,
                                weight_decay=linear.weight_decay)
    else:
        train_data = Labeled(train, linear_train_transform(cfg.data))
        test_data = Labeled(test, eval_transform(cfg.data))
        classifier = Classifier(encoder.backbone, encoder.feature_dim, classes, linear.lr or paper_lr(encoder.arch),
                                linear.batch_size, weight_decay=linear.weight_decay)
    result = train_and_test(classifier, train_data, test_data, cfg, linear.epochs, linear.batch_size, out)
    return {**result, "variant": linear.variant}


def lbfgs_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                classes: int, weight_decay: float, iterations: int) -> dict[str, float]:
    """Multinomial logistic regression on (N, D) features fitted by full-batch L-BFGS; test top-1 / top-5 (%).

    Minimises mean cross-entropy + weight_decay / 2 * ||W||^2, a convex problem: its answer does
    not depend on a learning rate or on how the features are scaled, only on `iterations` (at most).
    """
    layer = nn.Linear(train_x.shape[1], classes).double()
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    x, test_x = train_x.double(), test_x.double()
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=iterations, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x), train_y) + weight_decay / 2 * layer.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    with torch.no_grad():
        loss = float(F.cross_entropy(layer(x), train_y))
        logits = layer(test_x)
    accuracy = {f"top{k}": 100 * float(multiclass_accuracy(logits, test_y, classes, top_k=min(k, classes),
                                                          average="micro")) for k in (1, 5)}
    return {**accuracy, "train_loss": round(loss, 4)}  # cross-entropy on the training features, at the end
