"""BINGO's peers with a teacher: SEED (Fang et al., ICLR 2021, arXiv 2101.04731), CompRess-1q/2q (Abbasi
Koohpayegani et al., NeurIPS 2020, arXiv 2010.14713), DisCo (Gao et al., ECCV 2022, arXiv 2104.09124) and
SimReg (Navaneet et al., BMVC 2021, arXiv 2201.05131).

Each differs from the shared base only in what it compares and how; data, schedule, teacher
handling and logging come from `Method`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bingo.config import CompressConfig, DiscoConfig, MoCoConfig, OptimConfig, SeedConfig, SimRegConfig
from bingo.data.views import ImageViews
from bingo.errors import UserError
from bingo.methods.base import Method, alignment, require_same_dim
from bingo.methods.losses import compress_loss, cosine_regression, seed_loss, squared_error
from bingo.methods.moco import MoCo
from bingo.methods.momentum import MomentumEncoder
from bingo.methods.queue import KeyQueue
from bingo.models.encoder import Encoder, projection_head


class Seed(Method):
    """SEED: one view; the student matches the teacher's similarity distribution over a teacher queue."""

    uses_teacher_embeddings = True

    def __init__(self, *, student: Encoder, teacher: Encoder, optim: OptimConfig, seed: SeedConfig,
                 teacher_bn: str = "eval", shuffle_bn_group: int = 0, split_queries: bool = False,
                 run_info: dict | None = None):
        super().__init__(student=student, teacher=teacher, optim=optim, teacher_bn=teacher_bn,
                         shuffle_bn_group=shuffle_bn_group, split_queries=split_queries, run_info=run_info)
        dim = teacher.embed_dim
        require_same_dim(student.embed_dim, dim, "embedding", "student.embed_dim")
        self.seed_cfg = seed
        self.queue = KeyQueue(seed.queue_size, dim)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One SEED step: student and teacher see the same view."""
        (images,), _, _, *cached = batch
        student = self.student(images)  # s: (B, D)
        (teacher,) = self.teacher_keys(images, cached=cached)  # t: (B, D)
        loss = seed_loss(student, teacher, self.queue.snapshot(), self.seed_cfg.student_temperature,
                         self.seed_cfg.teacher_temperature).mean()
        self.queue.push(teacher)
        self.log_terms({"loss": loss, "alignment": alignment(student, teacher)}, len(images))
        return loss


class Compress(Method):
    """CompRess: KL between the teacher's and the student's similarities to memory banks of earlier images.

    As the official code (github UMBCvision/CompRess) trains it, on backbone features: CompRess-2q
    (`banks=2`) compares the bare pooled backbone with a bank of a momentum copy's features;
    CompRess-1q (`banks=1`) maps the backbone through one Linear layer into the teacher's feature space
    and compares it with the teacher's bank. The student's projection head is not used (nor trained).
    """

    cache_layer = "features"

    def __init__(self, *, student: Encoder, teacher: Encoder, optim: OptimConfig, compress: CompressConfig,
                 banks: int, teacher_bn: str = "eval", shuffle_bn_group: int = 0, split_queries: bool = False,
                 run_info: dict | None = None):
        super().__init__(student=student, teacher=teacher, optim=optim, teacher_bn=teacher_bn,
                         shuffle_bn_group=shuffle_bn_group, split_queries=split_queries, run_info=run_info)
        self.compress = compress
        self.views = ImageViews(1, weak=compress.weak_view)
        if student.head is not None:
            student.head.requires_grad_(False)
        self.to_teacher = nn.Linear(student.feature_dim, teacher.feature_dim) if banks == 1 else None  # 1q
        self.teacher_bank = KeyQueue(compress.bank_size, teacher.feature_dim)
        self.momentum_student = MomentumEncoder(student, compress.momentum, shuffle_bn_group) if banks == 2 else None
        self.student_bank = KeyQueue(compress.bank_size, student.feature_dim) if banks == 2 else None

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One CompRess step: each network against its bank, before this batch is added."""
        (images,), _, _, *cached = batch
        features = self.student.features(images)  # (B, Fs)
        teacher = F.normalize(self.teacher_features(images, cached=cached)[0], dim=1)  # (B, Ft)
        teacher_bank = self.teacher_bank.snapshot()
        if self.to_teacher is not None:  # 1q: the teacher's bank for both
            student, student_bank = F.normalize(self.to_teacher(features), dim=1), teacher_bank  # (B, Ft)
        else:  # 2q: the momentum student's bank
            student, student_bank = F.normalize(features, dim=1), self.student_bank.snapshot()  # (B, Fs)
            self.momentum_student.update(self.student)
            self.student_bank.push(F.normalize(self.momentum_student.features(images), dim=1))
        loss = compress_loss(student, teacher, student_bank, teacher_bank, self.compress.temperature).mean()
        self.teacher_bank.push(teacher)
        terms = {"loss": loss}
        if self.to_teacher is not None:  # 1q maps the student into the teacher's space; 2q's spaces are unrelated
            terms["alignment"] = alignment(student, teacher)
        self.log_terms(terms, len(images))
        return loss


class DisCo(MoCo):
    """DisCo: MoCo-v2 on the student, plus squared error between its and the teacher's embeddings of both views."""

    uses_teacher_embeddings = True

    def __init__(self, *, student: Encoder, teacher: Encoder, optim: OptimConfig, moco: MoCoConfig,
                 disco: DiscoConfig, teacher_bn: str = "eval", run_info: dict | None = None):
        super().__init__(student=student, teacher=teacher, optim=optim, moco=moco, teacher_bn=teacher_bn,
                         run_info=run_info)
        require_same_dim(student.embed_dim, teacher.embed_dim, "embedding", "student.embed_dim")
        if disco.images_per_sum < 1:
            raise UserError(f"distill.disco.images_per_sum must be at least 1, not {disco.images_per_sum}")
        self.disco = disco

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One DisCo step on two views."""
        (first, second), _, _, *cached = batch
        terms, first_student = self.moco_terms(first, second)
        second_student = self.student(second)
        first_teacher, second_teacher = self.teacher_keys(first, second, cached=cached)
        errors = squared_error(first_student, first_teacher) + squared_error(second_student, second_teacher)  # (B,)
        terms["distill"] = self.disco.weight * self.disco.images_per_sum * errors.mean()
        terms["loss"] = terms["moco"] + terms["distill"]
        terms["alignment"] = alignment(first_student, first_teacher)
        self.log_terms(terms, len(first))
        return terms["loss"]


class SimReg(Method):
    """SimReg: an MLP predictor on the student backbone regresses the teacher's backbone features (2 - 2·cos).

    As the official recipe (github UCDvision/simreg, `--n_mlp_layers 4 --single_aug --weak_weak`): a
    4-layer predictor and one weakly augmented view shared by teacher and student. The student's own
    projection head is not used (nor trained); the predictor is dropped after training.
    """

    cache_layer = "features"

    def __init__(self, *, student: Encoder, teacher: Encoder, optim: OptimConfig, simreg: SimRegConfig,
                 teacher_bn: str = "eval", shuffle_bn_group: int = 0, split_queries: bool = False,
                 run_info: dict | None = None):
        super().__init__(student=student, teacher=teacher, optim=optim, teacher_bn=teacher_bn,
                         shuffle_bn_group=shuffle_bn_group, split_queries=split_queries, run_info=run_info)
        self.views = ImageViews(1, weak=simreg.weak_view)
        self.predictor = simreg_predictor(student.feature_dim, teacher.feature_dim, simreg)
        if student.head is not None:
            student.head.requires_grad_(False)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        """One SimReg step: student and teacher see the same view."""
        (images,), _, _, *cached = batch
        prediction = self.predictor(self.student.features(images))  # (B, Dt)
        (target,) = self.teacher_features(images, cached=cached)  # (B, Dt)
        per_image = cosine_regression(prediction, target)
        loss = per_image.mean()
        self.log_terms({"loss": loss, "alignment": 1 - per_image.detach().mean() / 2}, len(images))
        return loss


def simreg_predictor(student_dim: int, teacher_dim: int, simreg: SimRegConfig) -> nn.Sequential:
    """SimReg's predictor: 4 layers F-2F-F-2F-T, BatchNorm and ReLU after the 1st and 3rd (the official one), or
    2 layers F-hidden-T."""
    if simreg.predictor_layers == 4:
        return nn.Sequential(projection_head(student_dim, 2 * student_dim, student_dim, batch_norm=True),
                             projection_head(student_dim, 2 * student_dim, teacher_dim, batch_norm=True))
    if simreg.predictor_layers == 2:
        return projection_head(student_dim, simreg.predictor_hidden, teacher_dim, batch_norm=True)
    raise UserError(f"distill.simreg.predictor_layers must be 4 (official) or 2, not {simreg.predictor_layers}")
