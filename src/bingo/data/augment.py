"""MoCo-v2's augmentation on whole batches of uint8 images, on the device the networks run on (kornia).

Each image of a batch gets its own random draw of every parameter (crop box, jitter factors,
grayscale, blur sigma, flip), with the same distributions as the per-image torchvision pipeline of
`transforms.moco_v2_transform` (tests/test_augment.py compares them): crop area uniform in
[crop_min_scale, 1] of the image and log aspect ratio uniform in [log 3/4, log 4/3] (MoCo-v2, He et
al. 2020, arXiv 2003.04297; SimCLR, arXiv 2002.05709, Appendix A), colour jitter with probability
jitter_prob, grayscale, Gaussian blur with sigma in [0.1, 2], horizontal flip with probability 1/2.
One difference: the four jitter operations are applied in one random order per batch, not per image.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from bingo.config import AugmentConfig, DataConfig


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian-blur kernel of about 10% of the image side (SimCLR, arXiv 2002.05709, Appendix A)."""
    return max(3, image_size // 10 * 2 + 1)


class BatchAugment(nn.Module):
    """uint8 images (B, C, H, W) -> augmented, normalised float views (B, C, S, S), S = data.image_size."""

    def __init__(self, data: DataConfig, aug: AugmentConfig):
        super().__init__()
        s, colour = aug.jitter_strength, data.channels == 3
        ops: list[nn.Module] = [
            K.RandomResizedCrop((data.image_size, data.image_size), scale=(aug.crop_min_scale, 1.0),
                                cropping_mode="resample", align_corners=False),
            K.ColorJitter(s, s, s if colour else 0.0, s / 4 if colour else 0.0, p=aug.jitter_prob)]
        if colour:
            ops.append(K.RandomGrayscale(p=aug.grayscale_prob))
        if aug.blur_prob > 0:
            kernel = blur_kernel_size(data.image_size)
            ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=aug.blur_prob))
        if aug.flip:
            ops.append(K.RandomHorizontalFlip())
        self.ops = nn.Sequential(*ops)
        self.register_buffer("mean", torch.tensor(data.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment each image with its own random parameters, then normalise: (B, C, H, W) uint8 -> float."""
        views = self.ops(images.float().div_(255)).clamp_(0, 1)  # (B, C, S, S) in [0, 1]
        return (views - self.mean) / self.std

    def views(self, *images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format,
              ) -> list[torch.Tensor]:
        """One augmented view of each batch in `images`, drawn in one call: [(B, C, S, S), ...]."""
        out = self(torch.cat(images)).contiguous(memory_format=memory_format)
        return list(out.split([len(batch) for batch in images]))
