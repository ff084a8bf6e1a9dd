"""Backbones from torchvision and timm, with their stem adapted to small images by config."""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

from bingo.config import ModelConfig
from bingo.errors import UserError

STEMS = ("imagenet", "cifar", "small")


def build_backbone(cfg: ModelConfig, in_channels: int) -> tuple[nn.Module, int]:
    """A backbone that maps (B, in_channels, H, W) images to pooled (B, D) features, and D."""
    if cfg.stem not in STEMS:
        raise UserError(f"unknown stem '{cfg.stem}'; choose one of: {', '.join(STEMS)}")
    torchvision_resnets = [n for n in torchvision.models.list_models(torchvision.models) if n.startswith("resnet")]
    if cfg.arch in torchvision_resnets and cfg.width == 64:
        model = torchvision.models.get_model(cfg.arch, weights=None)
        dim = model.fc.in_features
        model.fc = nn.Identity()
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    else:
        model, dim = _timm_backbone(cfg, in_channels)
    _adapt_stem(model, cfg.stem)
    return model, dim


def _timm_backbone(cfg: ModelConfig, in_channels: int) -> tuple[nn.Module, int]:
    extra = {}
    if cfg.width != 64:
        if not cfg.arch.startswith("resnet"):
            raise UserError(f"model width applies to ResNets only, not '{cfg.arch}'; leave width at 64")
        extra = {"channels": tuple(cfg.width * m for m in (1, 2, 4, 8)), "stem_width": cfg.width}
    if cfg.arch.startswith("resnet"):
        extra["zero_init_last"] = False  # initialise like torchvision's ResNet, so both builds train alike
    try:
        model = timm.create_model(cfg.arch, pretrained=False, num_classes=0, in_chans=in_channels, **extra)
    except RuntimeError as err:
        raise UserError(f"unknown model '{cfg.arch}' ({err}); use a torchvision ResNet or a timm model name") from None
    return model, model.num_features


def _adapt_stem(model: nn.Module, stem: str) -> None:
    """Replace the ImageNet stem: `cifar` keeps full resolution, `small` halves it once."""
    if stem == "imagenet":
        return
    stride = 1 if stem == "cifar" else 2
    if hasattr(model, "conv1") and hasattr(model, "maxpool"):  # torchvision and timm ResNets
        old = model.conv1
        model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride, 1, bias=False)
        model.maxpool = nn.Identity()
        return
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # EfficientNet, MobileNet...
    first_conv.stride = (stride, stride)


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())
