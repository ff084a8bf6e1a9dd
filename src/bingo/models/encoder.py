"""An encoder is a backbone plus a projection head; the unit that teachers and students share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bingo.config import ModelConfig
from bingo.models.backbones import build_backbone


def projection_head(in_dim: int, hidden: int, out_dim: int, batch_norm: bool = False) -> nn.Sequential:
    """MoCo-v2's MLP head: Linear(in, hidden) - [BatchNorm] - ReLU - Linear(hidden, out)."""
    norm = [nn.BatchNorm1d(hidden)] if batch_norm else []
    return nn.Sequential(nn.Linear(in_dim, hidden), *norm, nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class Encoder(nn.Module):
    """Backbone + projection head; `forward` gives L2-normalised embeddings, `features` pooled features."""

    def __init__(self, cfg: ModelConfig, in_channels: int):
        super().__init__()
        self.arch = cfg.arch
        self.backbone, self.feature_dim = build_backbone(cfg, in_channels)
        self.head = projection_head(self.feature_dim, cfg.head_hidden, cfg.embed_dim, cfg.head_bn)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features: (B, C, H, W) -> (B, D)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings: (B, C, H, W) -> (B, embed_dim)."""
        return F.normalize(self.head(self.backbone(images)), dim=1)
