"""A momentum copy of the student: MoCo's key encoder, DisCo's and CompRess-2q's, BINGO's ablation keys."""

from __future__ import annotations

import copy

import torch
from torch import nn

from bingo.methods.base import freeze
from bingo.methods.queue import shuffled_forward
from bingo.models.encoder import Encoder


class MomentumEncoder(nn.Module):
    """Follows `source` by exponential moving average; encodes keys with shuffle-BN, without gradient."""

    def __init__(self, source: Encoder, momentum: float, shuffle_bn_group: int = 0):
        super().__init__()
        self.encoder = copy.deepcopy(source)
        freeze(self.encoder, batch_statistics=True)
        self.momentum, self.shuffle_bn_group = momentum, shuffle_bn_group

    @torch.no_grad()
    def update(self, source: Encoder) -> None:
        """encoder ← m·encoder + (1 - m)·source, every parameter in one fused call."""
        mine, theirs = list(self.encoder.parameters()), [p.detach() for p in source.parameters()]
        torch._foreach_lerp_(mine, theirs, 1 - self.momentum)  # mine + (1 - m)·(theirs - mine)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, C, H, W) -> (B, F), BatchNorm over a shuffled batch (CompRess-2q's keys)."""
        return shuffled_forward(self.encoder.backbone, images, self.shuffle_bn_group)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings (B, C, H, W) -> (B, D), BatchNorm over a shuffled batch."""
        return shuffled_forward(self.encoder, images, self.shuffle_bn_group)
