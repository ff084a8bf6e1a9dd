"""An encoder is a backbone plus a projection head; the unit that teachers and students share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bingo.config import ModelConfig
from bingo.models.backbones import build_backbone


def projection_head(in_dim: int, hidden: int, out_dim: int, batch_norm: bool = False, bias: bool = True,
                    out_norm: bool = False) -> nn.Sequential:
    """Linear(in, hidden) - [BatchNorm] - ReLU - Linear(hidden, out) - [BatchNorm without affine].

    MoCo-v2's head is the default; `hidden=0` gives a single Linear(in, out) (MoCo v1); `bias=False`
    and `out_norm=True` with `batch_norm=True` give MoCo v3's projector.
    """
    if hidden:
        norm = [nn.BatchNorm1d(hidden)] if batch_norm else []
        layers = [nn.Linear(in_dim, hidden, bias=bias), *norm, nn.ReLU(inplace=True),
                  nn.Linear(hidden, out_dim, bias=bias)]
    else:
        layers = [nn.Linear(in_dim, out_dim, bias=bias)]
    return nn.Sequential(*layers, *([nn.BatchNorm1d(out_dim, affine=False)] if out_norm else []))


class Encoder(nn.Module):
    """Backbone + projection head; `forward` gives L2-normalised embeddings, `features` pooled features.

    With `embed_dim=0` the encoder is a backbone only (`head` is None): a teacher from a checkpoint
    without projection head, usable by the methods that distil backbone features.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int):
        super().__init__()
        self.arch = cfg.arch
        self.backbone, self.feature_dim = build_backbone(cfg, in_channels)
        self.embed_dim = cfg.embed_dim
        self.head = projection_head(self.feature_dim, cfg.head_width(), cfg.embed_dim, cfg.head_bn, cfg.head_bias,
                                    cfg.head_out_bn) if cfg.embed_dim else None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features: (B, C, H, W) -> (B, D)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings: (B, C, H, W) -> (B, embed_dim); an encoder without head has none."""
        if self.head is None:
            raise RuntimeError("this encoder has no projection head; use features()")
        return F.normalize(self.head(self.backbone(images)), dim=1)
