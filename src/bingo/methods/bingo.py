"""BINGO: the student pulls each image and a member of its bag toward the frozen teacher's keys."""

from __future__ import annotations

import torch

from bingo.config import BingoConfig, OptimConfig
from bingo.data.transforms import cutmix
from bingo.data.views import BagPairViews
from bingo.errors import UserError
from bingo.methods.base import Method, alignment, require_same_dim
from bingo.methods.losses import bingo_loss
from bingo.methods.momentum import MomentumEncoder
from bingo.methods.queue import KeyQueue
from bingo.models.encoder import Encoder


class Bingo(Method):
    """Bag of Instances Aggregation (Xu et al., ICLR 2022, arXiv 2107.01691): its bag loss over a queue of anchor keys.

    Keys come from the frozen teacher (`keys=teacher`), or, for the paper's ablation of the teacher
    parameters, from a momentum copy of the student (`keys=momentum`; no teacher needed).
    With `keys=teacher` and no teacher, the keys come with each batch, drawn from a teacher-key
    cache (`bingo cache`): the teacher never runs and the key views are never augmented.
    """

    views = BagPairViews()
    uses_teacher_embeddings = True

    def __init__(self, *, student: Encoder, teacher: Encoder | None, optim: OptimConfig, bingo: BingoConfig,
                 teacher_bn: str = "eval", shuffle_bn_group: int = 0, split_queries: bool = False,
                 run_info: dict | None = None):
        if bingo.keys not in ("teacher", "momentum"):
            raise UserError(f"distill.bingo.keys must be 'teacher' or 'momentum', not '{bingo.keys}'")
        momentum = bingo.keys == "momentum"
        super().__init__(student=student, teacher=None if momentum else teacher, optim=optim, teacher_bn=teacher_bn,
                         shuffle_bn_group=shuffle_bn_group, split_queries=split_queries, run_info=run_info)
        dim = student.embed_dim
        if teacher is not None and not momentum:
            require_same_dim(dim, teacher.embed_dim, "embedding", "student.embed_dim")
        self.bingo = bingo
        self.key_encoder = MomentumEncoder(student, bingo.key_momentum, shuffle_bn_group) if momentum else None
        self.queue = KeyQueue(bingo.queue_size, dim)

    @property
    def cached_views(self) -> int:
        """One cached key view of each anchor (and of each positive), drawn anew every step."""
        return 1

    @property
    def query_views(self) -> int:
        """Student queries per anchor: the anchor's, and the positive's when the symmetric or CutMix term needs it."""
        return 2 if self.bingo.symmetric or self.bingo.cutmix else 1

    def make_views(self, batch: tuple) -> tuple:
        """A batch of uint8 anchors and positives -> ([t1(a), t2(a), t3(p), t4(p)], labels, indices...).

        With cached keys, only the queries are augmented: ([t1(a)] or [t1(a), t3(p)], ..., ya, yp).
        """
        anchors, positives, *rest = batch
        if len(rest) == 3:  # labels, anchor indices, positive indices: the keys' views are needed
            images = (anchors, anchors, positives, positives)
        else:
            images = (anchors, positives)[:self.query_views]
        return (self.augment.views(*images, memory_format=self.memory_format), *rest)

    def keys(self, *views: torch.Tensor) -> list[torch.Tensor]:
        """Normalised keys of each view (B, D), from the teacher or the momentum student; no gradient."""
        if self.key_encoder is None:
            return self.teacher_keys(*views)
        self.key_encoder.update(self.student)
        return [self.key_encoder(view) for view in views]

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
        """One BINGO step on (t1(a), t2(a), t3(p), t4(p)), or on the queries and cached keys (ya, yp)."""
        views, _, _, _, *cached = batch
        if cached:
            anchor_keys, positive_keys = cached  # ya, yp: (B, D)
            anchor_query, positive_query = (*views, None)[:2]
        else:
            anchor_query, anchor_key, positive_query, positive_key = views
            anchor_keys, positive_keys = self.keys(anchor_key, positive_key)  # ya, yp: (B, D)
        cfg = self.bingo
        anchor = self.student(anchor_query)  # za: (B, D)
        positive = self.student(positive_query) if cfg.symmetric else None  # zp
        mixed, lam_mix = None, 1.0
        if cfg.cutmix:
            mixed_images, lam_mix = cutmix(anchor_query, positive_query, cfg.cutmix_alpha)
            mixed = self.student(mixed_images)  # zm
        lam_self, lam_other = self.loss_weights(self.epoch_progress(batch_idx))
        terms = bingo_loss(anchor, positive, mixed, anchor_keys, positive_keys, self.queue.snapshot(),
                           cfg.temperature, lam_self, lam_other, lam_mix)
        self.queue.push(anchor_keys)
        terms["key_alignment"] = alignment(anchor, anchor_keys)  # the keys come from another view
        if self.teacher is not None and self.logging_step():  # an extra teacher pass, only when logged
            terms["alignment"] = alignment(anchor, self.teacher_keys(anchor_query)[0])
        self.log_terms(terms, len(anchor))
        return terms["loss"]
