"""MoCo-v2: the student alone, a momentum key encoder and a queue (the baseline and the teacher recipe)."""

from __future__ import annotations

import copy

import torch

from bingo.config import MoCoConfig, OptimConfig
from bingo.methods.base import Method, freeze
from bingo.methods.losses import info_nce
from bingo.methods.queue import KeyQueue, shuffled_forward
from bingo.models.encoder import Encoder


class MoCo(Method):
    """Query encoder = student; key encoder = its momentum copy, run with shuffle-BN."""

    def __init__(self, student: Encoder, optim: OptimConfig, moco: MoCoConfig, run_info: dict | None = None):
        super().__init__(student, optim, run_info=run_info)
        self.moco = moco
        self.key_encoder = copy.deepcopy(student)
        freeze(self.key_encoder, batch_statistics=True)
        self.queue = KeyQueue(moco.queue_size, student.head[-1].out_features)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key ← m·key + (1 - m)·query, parameter by parameter."""
        for key, query in zip(self.key_encoder.parameters(), self.student.parameters(), strict=True):
            key.mul_(self.moco.momentum).add_(query.detach(), alpha=1 - self.moco.momentum)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One MoCo-v2 step on two views of each image."""
        (query_images, key_images), _, _ = batch
        self.momentum_update()
        queries = self.student(query_images)  # (B, D)
        keys = shuffled_forward(self.key_encoder, key_images, self.moco.shuffle_bn_splits)  # (B, D)
        loss = info_nce(queries, keys.unsqueeze(1), self.queue.snapshot(), self.moco.temperature).mean()
        self.queue.push(keys)
        self.log_terms({"loss": loss, "alignment": (queries.detach() * keys).sum(1).mean()}, len(queries))
        return loss
