"""MoCo-v2: the student alone, a momentum key encoder and a queue (the baseline and the teacher recipe).

MoCo: He et al., CVPR 2020, arXiv 1911.05722; MoCo-v2: Chen et al., arXiv 2003.04297.
"""

from __future__ import annotations

import torch

from bingo.config import MoCoConfig, OptimConfig
from bingo.data.views import ImageViews
from bingo.methods.base import Method, alignment
from bingo.methods.losses import info_nce
from bingo.methods.momentum import MomentumEncoder
from bingo.methods.queue import KeyQueue
from bingo.models.encoder import Encoder


class MoCo(Method):
    """Query encoder = student; key encoder = its momentum copy, run with shuffle-BN."""

    views = ImageViews(2)

    def __init__(self, *, student: Encoder, teacher: Encoder | None = None, optim: OptimConfig, moco: MoCoConfig,
                 teacher_bn: str = "eval", run_info: dict | None = None):
        moco = moco.resolved(own=True)  # shuffle-BN left null: MoCo's own
        super().__init__(student=student, teacher=teacher, optim=optim, teacher_bn=teacher_bn,
                         shuffle_bn_group=moco.shuffle_bn_group, split_queries=moco.split_queries, run_info=run_info)
        self.moco = moco
        self.key_encoder = MomentumEncoder(student, moco.momentum, moco.shuffle_bn_group)
        self.queue = KeyQueue(moco.queue_size, student.embed_dim)

    def moco_terms(self, query_images: torch.Tensor, key_images: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """MoCo-v2's InfoNCE of the student's queries against momentum keys; the queue moves on.

        Returns ({"moco": loss, "key_alignment": mean query-key cosine}, queries (B, D)).
        """
        self.key_encoder.update(self.student)
        queries = self.student(query_images)  # (B, D)
        keys = self.key_encoder(key_images)  # (B, D)
        loss = info_nce(queries, keys.unsqueeze(1), self.queue.snapshot(), self.moco.temperature).mean()
        self.queue.push(keys)
        return {"moco": loss, "key_alignment": alignment(queries, keys)}, queries

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One MoCo-v2 step on two views of each image."""
        (query_images, key_images), _, _ = batch
        terms, queries = self.moco_terms(query_images, key_images)
        terms["loss"] = terms.pop("moco")
        self.log_terms(terms, len(queries))
        return terms["loss"]
