"""Backbones from torchvision and timm, with their stem adapted to small images by config.

A ResNet of width w != 64 is SwAV's widened ResNet (facebookresearch/swav, src/resnet50.py; SimCLR's
2x/4x ResNet-50 are the same): the stem has w channels and stage i has bottlenecks of w * 2^i channels
and outputs w * 2^i * expansion, so `resnet50` of width 128 is SwAV's RN50w2 (4096 features).
"""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn

from bingo.config import ModelConfig
from bingo.errors import UserError

STEMS = ("imagenet", "cifar", "small")
WIDE_RESNET50S = {"resnet50w2": 128, "resnet50w4": 256, "resnet50w5": 320}  # SwAV's names: resnet50 at these widths
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build_backbone(cfg: ModelConfig, in_channels: int) -> tuple[nn.Module, int]:
    """A backbone that maps (B, in_channels, H, W) images to pooled (B, D) features, and D."""
    if cfg.stem not in STEMS:
        raise UserError(f"unknown stem '{cfg.stem}'; choose one of: {', '.join(STEMS)}")
    arch, width = resolve_arch(cfg)
    if arch in TORCHVISION_RESNETS:
        model = _torchvision_resnet(arch, width, cfg.stem_width or width, in_channels)
        dim = model.inplanes  # channels out of the last stage
    elif width != 64:
        raise UserError(f"model width applies to the torchvision ResNets ({', '.join(TORCHVISION_RESNETS)}), "
                        f"not '{arch}'; leave width at 64")
    else:
        model, dim = _timm_backbone(arch, in_channels)
    _adapt_stem(model, cfg.stem)
    return model, dim


def resolve_arch(cfg: ModelConfig) -> tuple[str, int]:
    """(arch, width) with SwAV's names resolved: `resnet50w2` is `resnet50` of width 128 (w4: 256, w5: 320)."""
    if cfg.arch not in WIDE_RESNET50S:
        return cfg.arch, cfg.width
    width = WIDE_RESNET50S[cfg.arch]
    if cfg.width not in (64, width):
        raise UserError(f"{cfg.arch} is resnet50 of width {width}; leave width at 64 or set it to {width}")
    return "resnet50", width


def _torchvision_resnet(arch: str, width: int, stem_width: int, in_channels: int) -> nn.Module:
    model = torchvision.models.get_model(arch, weights=None)
    model.fc = nn.Identity()
    if (width, stem_width) != (64, 64):
        _widen(model, width, stem_width, in_channels)
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


def feature_width(cfg: ModelConfig, in_channels: int) -> int:
    """The width D of the backbone's pooled features, found without making its weights (no random numbers drawn)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_backbone(cfg, in_channels)[1]


def _widen(model: torchvision.models.ResNet, width: int, stem_width: int, in_channels: int) -> None:
    """Rebuild the stem with `stem_width` channels and stage i with `width * 2^i`-channel blocks, as SwAV does."""
    block = type(model.layer1[0])
    model.conv1 = nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(stem_width)
    model.inplanes = stem_width
    for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
        blocks = len(getattr(model, name))
        setattr(model, name, model._make_layer(block, width * 2**i, blocks, stride=1 if i == 0 else 2))
    for module in model.modules():  # torchvision's initialisation (BatchNorm's default is already 1, 0)
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def _timm_backbone(arch: str, in_channels: int) -> tuple[nn.Module, int]:
    extra = {"zero_init_last": False} if arch.startswith("resnet") else {}  # initialise like torchvision's ResNet
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_channels, **extra)
    except RuntimeError as err:
        raise UserError(f"unknown model '{arch}' ({err}); use a torchvision ResNet or a timm model name") from None
    return model, getattr(model, "head_hidden_size", None) or model.num_features  # MobileNet-v3: after its head conv


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
