"""The LightningModule every method builds on: student, frozen teacher, SGD + cosine, logging, run identity."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from bingo.config import OptimConfig
from bingo.data.augment import BatchAugment
from bingo.data.views import ImageViews, ViewPlan
from bingo.errors import UserError
from bingo.methods.queue import shuffled_forward, split_batchnorm
from bingo.models.encoder import Encoder

TEACHER_BN_MODES = ("eval", "train")


class Method(L.LightningModule):
    """Trains `student` (all parameters that require grad); an optional `teacher` stays frozen.

    Teacher BatchNorm: `eval` uses the running statistics (deterministic keys); `train` uses batch
    statistics with shuffle-BN as the official BINGO code does, the running statistics untouched.
    `run_info` (the run's identity: the hash of the settings that define it, bingo.store) is stored in
    every checkpoint and must match when a run is resumed. A method that distils the teacher's
    embeddings sets `uses_teacher_embeddings` and refuses a teacher without projection head.
    """

    uses_teacher_embeddings = False
    views: ViewPlan = ImageViews(1)  # what a training sample is, and its augmented views
    cache_layer = "embedding"  # what a teacher cache must hold for this method: embedding | features

    @property
    def cached_views(self) -> int:
        """Distinct cached views of each image a step takes from a teacher cache."""
        return self.views.count

    def __init__(self, *, student: Encoder, teacher: Encoder | None = None, optim: OptimConfig,
                 teacher_bn: str = "eval", shuffle_bn_group: int = 0, split_queries: bool = False,
                 run_info: dict | None = None):
        super().__init__()
        if teacher_bn not in TEACHER_BN_MODES:
            raise UserError(f"teacher_bn must be one of {TEACHER_BN_MODES}, got '{teacher_bn}'")
        self.student, self.optim, self.teacher = student, optim, teacher
        self.teacher_bn, self.shuffle_bn_group = teacher_bn, shuffle_bn_group
        if split_queries and shuffle_bn_group <= 0:
            raise UserError("moco.split_queries=true normalises the queries in groups of moco.shuffle_bn_group images; "
                            f"set that to the group size (e.g. 32), not {shuffle_bn_group}")
        if split_queries:  # before any momentum copy of the student is made: it splits too
            split_batchnorm(student, shuffle_bn_group)
        self.run_info = run_info or {}
        self.augment: BatchAugment | None = None  # set: batches of uint8 images, augmented on the device
        self.memory_format = torch.contiguous_format  # of the images given to the networks (channels_last: NHWC)
        self.on_train_epoch_start()
        if teacher is not None and teacher.head is None and self.uses_teacher_embeddings:
            raise UserError(f"the teacher has no projection head (its checkpoint holds a backbone only), so "
                            f"{type(self).__name__} cannot distil its embeddings; use a method that distils the "
                            "teacher's backbone features")
        if teacher is not None:
            freeze(teacher, batch_statistics=teacher_bn == "train")
            if teacher_bn == "train":
                for module in teacher.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.momentum = 0.0  # batch statistics in use, running statistics kept

    def train(self, mode: bool = True) -> Method:
        """Set training mode, keeping the teacher in eval mode unless teacher_bn is 'train'."""
        super().train(mode)
        if self.teacher is not None and self.teacher_bn == "eval":
            self.teacher.eval()
        return self

    def use_device_augment(self, augment: BatchAugment, channels_last: bool) -> None:
        """Receive batches of uint8 images and augment them with `augment` where the networks run."""
        self.augment = augment
        self.use_memory_format(channels_last)

    def use_memory_format(self, channels_last: bool) -> None:
        """Keep every network's weights, and the images given to them, in NHWC order (or NCHW)."""
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """On the device: the views of a batch of uint8 images; the views in the networks' memory order."""
        if self.augment is not None:
            return self.make_views(batch)
        views, *rest = batch
        return ([view.contiguous(memory_format=self.memory_format) for view in views], *rest)

    def make_views(self, batch: tuple) -> tuple:
        """(images (B, C, H, W) uint8, labels, indices) -> ([views.count augmented views], labels, indices).

        A batch from a teacher cache, (..., outputs (B, V, D), view parameters (B, V, P)), gives the
        cached views rebuilt exactly, then their outputs: ([V views], labels, indices, outputs).
        """
        if len(batch) == 3:
            images, *rest = batch
            return (self.augment.views(*[images] * self.views.count, memory_format=self.memory_format), *rest)
        images, labels, indices, outputs, params = batch
        count = params.shape[1]
        views = self.augment.views(*[images] * count, params=params.transpose(0, 1).flatten(0, 1),
                                   memory_format=self.memory_format)  # count x (B, C, S, S)
        return views, labels, indices, outputs

    def drop_teacher(self) -> None:
        """Forget the teacher's weights: its outputs come with each batch, from a teacher cache."""
        self.teacher = None

    def teacher_keys(self, *views: torch.Tensor, cached: list[torch.Tensor] = ()) -> list[torch.Tensor]:
        """The teacher's normalised embeddings of each view (B, C, H, W) -> (B, D), without gradient.

        `cached`: [(B, views, D)] outputs from a teacher cache, returned instead of running the teacher.
        """
        return list(cached[0].unbind(1)) if cached else self._run_teacher(self.teacher, views)

    def teacher_features(self, *views: torch.Tensor, cached: list[torch.Tensor] = ()) -> list[torch.Tensor]:
        """The teacher's pooled backbone features of each view (B, C, H, W) -> (B, F), without gradient (or cached)."""
        return list(cached[0].unbind(1)) if cached else self._run_teacher(self.teacher.backbone, views)

    def _run_teacher(self, network: nn.Module, views: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        with torch.inference_mode():
            if self.teacher_bn == "eval":
                outputs = network(torch.cat(views)).chunk(len(views))
            else:
                outputs = [shuffled_forward(network, view, self.shuffle_bn_group) for view in views]
        return [output.clone() for output in outputs]  # normal tensors: the loss keeps them for its backward

    def configure_optimizers(self) -> dict:
        """SGD on the trainable parameters; lr scaled by batch/256, linear warm-up then cosine per step."""
        cfg = self.optim
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=cfg.lr * cfg.batch_size / 256, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, foreach=True)  # one fused update on CPU too
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = total * cfg.warmup_epochs // max(1, cfg.epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def logging_step(self) -> bool:
        """True on the steps whose values Lightning writes to the loggers (every trainer.log_every_n_steps)."""
        trainer = self._trainer
        return trainer is not None and (trainer.global_step + 1) % trainer.log_every_n_steps == 0  # before the step

    def log_terms(self, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log each loss term and metric under train/ (step values and epoch means), the loss on the progress bar.

        Step values are logged only on the steps Lightning writes (each log call costs about 1 ms); the
        epoch means are summed on the device and logged once, at the epoch's end.
        """
        self.last_terms = terms  # read by the non-finite-loss check
        for name, value in terms.items():
            value = value.detach().float() * batch_size
            self.term_sums[name] = self.term_sums[name].add_(value) if name in self.term_sums else value
        self.term_count += batch_size
        if self.trainer.progress_bar_callback is not None:
            self.log("loss", terms["loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size)
        if self.logging_step():
            self.log_dict({f"train/{k}_step": v.detach() for k, v in terms.items()}, on_step=True, on_epoch=False,
                          batch_size=batch_size)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, batch_size=batch_size)

    def on_train_epoch_start(self) -> None:
        """Start the epoch's sums of the logged terms afresh."""
        self.term_sums: dict[str, torch.Tensor] = {}
        self.term_count = 0

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean of each term (train/NAME_epoch), averaged over the processes."""
        if self.term_count:
            self.log_dict({f"train/{k}_epoch": v / self.term_count for k, v in self.term_sums.items()},
                          on_step=False, on_epoch=True, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the run's identity with the checkpoint."""
        checkpoint["bingo_run"] = self.run_info

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse to resume from a checkpoint of another run (other settings, data, bags or teacher)."""
        stored = checkpoint.get("bingo_run", {})
        for key, value in self.run_info.items():
            if key in stored and stored[key] != value:
                raise UserError(f"cannot resume: the checkpoint belongs to another run ({key} {stored[key]}, this "
                                f"run's is {value}); start a new run with another --out")


def alignment(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean cosine between normalised student and teacher embeddings (B, D) of the same images."""
    return (student.detach() * teacher).sum(1).mean()


def require_same_dim(student_dim: int, teacher_dim: int, what: str, fix: str) -> None:
    """Refuse a student whose output cannot be compared with the teacher's, with the fix in one line."""
    if student_dim != teacher_dim:
        raise UserError(f"the student's embedding has {student_dim} dimensions but the teacher's {what} has "
                        f"{teacher_dim}; set {fix}={teacher_dim}")


def freeze(module: nn.Module, batch_statistics: bool = False) -> None:
    """Take a module out of the optimizer; BatchNorm uses batch statistics only if asked (train mode).

    Lightning keeps each submodule's mode as set here when training starts.
    """
    module.requires_grad_(False)
    module.train(batch_statistics)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
