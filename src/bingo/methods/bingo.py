"""BINGO: the student pulls each image and a member of its bag toward the frozen teacher's keys."""

from __future__ import annotations

import torch

from bingo.config import BingoConfig, OptimConfig
from bingo.data.transforms import cutmix
from bingo.errors import UserError
from bingo.methods.base import Method
from bingo.methods.losses import bingo_loss
from bingo.methods.queue import KeyQueue
from bingo.models.encoder import Encoder


class Bingo(Method):
    """Bag of Instances Aggregation (method.md §1.2); keys from the teacher, a queue of anchor keys."""

    def __init__(self, student: Encoder, teacher: Encoder, optim: OptimConfig, bingo: BingoConfig,
                 shuffle_bn_splits: int = 1, run_info: dict | None = None):
        super().__init__(student, optim, teacher, bingo.teacher_bn, shuffle_bn_splits, run_info)
        student_dim, teacher_dim = student.head[-1].out_features, teacher.head[-1].out_features
        if student_dim != teacher_dim:
            raise UserError(f"student.embed_dim is {student_dim} but the teacher embeds in {teacher_dim} "
                            f"dimensions; set student.embed_dim={teacher_dim}")
        self.bingo = bingo
        self.queue = KeyQueue(bingo.queue_size, teacher.head[-1].out_features)

    def loss_weights(self, epoch: float | None = None) -> tuple[float, float]:
        """(λs, λo) at a (fractional) epoch: (1, 0) during the warm-up, then the configured pair."""
        if (self.current_epoch if epoch is None else epoch) < self.bingo.warmup_epochs:
            return 1.0, 0.0
        return self.bingo.lam_self, self.bingo.lam_other

    def epoch_progress(self, batch_idx: int) -> float:
        """Epochs done so far, with the fraction of the current one (warm-up can be shorter than an epoch)."""
        batches = getattr(self._trainer, "num_training_batches", float("inf"))
        return self.current_epoch + batch_idx / batches

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One BINGO step on (t1(a), t2(a), t3(p), t4(p))."""
        (anchor_query, anchor_key, positive_query, positive_key), _, _, _ = batch
        cfg = self.bingo
        anchor = self.student(anchor_query)  # za: (B, D)
        positive = self.student(positive_query) if cfg.symmetric else None  # zp
        mixed, lam_mix = None, 1.0
        if cfg.cutmix:
            mixed_images, lam_mix = cutmix(anchor_query, positive_query, cfg.cutmix_alpha)
            mixed = self.student(mixed_images)  # zm
        anchor_keys, positive_keys = self.teacher_keys(anchor_key, positive_key)  # ya, yp: (B, D)
        lam_self, lam_other = self.loss_weights(self.epoch_progress(batch_idx))
        terms = bingo_loss(anchor, positive, mixed, anchor_keys, positive_keys, self.queue.snapshot(),
                           cfg.temperature, lam_self, lam_other, lam_mix)
        self.queue.push(anchor_keys)
        terms["alignment"] = (anchor.detach() * anchor_keys).sum(1).mean()
        self.log_terms(terms, len(anchor))
        return terms["loss"]
