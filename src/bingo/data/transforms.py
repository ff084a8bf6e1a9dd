"""The MoCo-v2 augmentation, the supervised protocols' augmentation and the evaluation transform."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import transforms as T

from bingo.config import AugmentConfig, DataConfig


def moco_v2_transform(data: DataConfig, aug: AugmentConfig) -> Callable:
    """MoCo-v2's random crop, colour jitter, grayscale, blur and flip; colour ops only on RGB."""
    s = aug.jitter_strength
    colour = data.channels == 3
    jitter = T.ColorJitter(s, s, s if colour else 0, s / 4 if colour else 0)
    blur_kernel = max(3, data.image_size // 10 * 2 + 1)  # odd, ~10% of the side as in SimCLR
    ops = [T.RandomResizedCrop(data.image_size, scale=(aug.crop_min_scale, 1.0)),
           T.RandomApply([jitter], p=aug.jitter_prob)]
    if colour:
        ops.append(T.RandomGrayscale(p=aug.grayscale_prob))
    if aug.blur_prob > 0:
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=aug.blur_prob))
    if aug.flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + _to_tensor(data))


def linear_train_transform(data: DataConfig) -> Callable:
    """The supervised protocols' training augmentation: random resized crop and horizontal flip."""
    return T.Compose([T.RandomResizedCrop(data.image_size), T.RandomHorizontalFlip()] + _to_tensor(data))


def eval_transform(data: DataConfig) -> Callable:
    """Resize to data.eval_resize, centre-crop data.image_size, normalise."""
    return T.Compose([T.Resize(data.eval_resize), T.CenterCrop(data.image_size)] + _to_tensor(data))


def _to_tensor(data: DataConfig) -> list:
    return [T.ToTensor(), T.Normalize(data.mean, data.std)]


def cutmix(base: torch.Tensor, patch_source: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float]:
    """Paste one random box of `patch_source` into `base` (B,C,H,W); returns the mix and base's surviving area.

    The box area is drawn from 1 - Beta(alpha, alpha) of the image, clipped at the borders, and the
    returned weight is recomputed from the clipped box, as in the official BINGO code.
    """
    _, _, height, width = base.shape
    keep = torch.distributions.Beta(alpha, alpha).sample().item()
    cut = (1.0 - keep) ** 0.5
    box_h, box_w = int(height * cut), int(width * cut)
    cy, cx = torch.randint(height, ()).item(), torch.randint(width, ()).item()
    y0, y1 = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    x0, x1 = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    mixed = base.clone()
    mixed[:, :, y0:y1, x0:x1] = patch_source[:, :, y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
