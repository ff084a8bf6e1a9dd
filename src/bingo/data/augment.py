"""MoCo-v2's augmentation on whole batches of uint8 images, on the device the networks run on (kornia, torchvision).

Each image of a batch gets its own random draw of every parameter (crop box, whether and how much
colour jitter and in which order, grayscale, blur sigma, flip), with the distributions of the
per-image torchvision pipeline of `transforms.moco_v2_transform` (tests/test_augment.py compares
them): crop area uniform in [crop_min_scale, 1] of the image and log aspect ratio uniform in
[log 3/4, log 4/3] (MoCo-v2, arXiv 2003.04297; SimCLR, arXiv 2002.05709, Appendix A), jitter with
probability jitter_prob in a random order per image, grayscale, Gaussian blur with sigma in
[0.1, 2], horizontal flip with probability 1/2.

Drawing and applying are separate (`draw`, `apply`): a view can be replayed exactly from its
parameters, which is how a teacher-output cache gives the student the very view the teacher saw
(FKD, Shen & Xing, arXiv 2112.01528).
"""

from __future__ import annotations

import torch
from kornia.augmentation.random_generator import ResizedCropGenerator
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.filters import gaussian_blur2d
from torch import nn
from torch.nn import functional as F

from bingo.config import AugmentConfig, DataConfig

# One view's parameters, a row of 17 numbers: the crop box, the jitter, grayscale, blur and flip.
BOX, JITTER, FACTORS, ORDER, GRAY, BLUR, SIGMA, FLIP = slice(0, 4), 4, slice(5, 9), slice(9, 13), 13, 14, 15, 16
PARAMS = 17
JITTER_OPS = (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
              adjust_saturation_with_gray_subtraction, lambda x, turns: adjust_hue(x, turns * 2 * torch.pi))


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian-blur kernel of about 10% of the image side (SimCLR, arXiv 2002.05709, Appendix A)."""
    return max(3, image_size // 10 * 2 + 1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's crop box resized to (size, size), bilinear: (B, C, H, W), (B, 4) -> (B, C, size, size).

    A box (x0, y0, x1, y1) holds inclusive pixel indices; the crop is sampled at the output pixels'
    centres, as torchvision's resize does (without antialiasing), the image's border repeated outside.
    """
    height, width = images.shape[-2:]
    centres = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size  # (S,) in [0, 1]
    low, extent = boxes[:, :2], boxes[:, 2:] + 1 - boxes[:, :2]  # (B, 2) x, y: pixel edges
    pixels = low.unsqueeze(1) + centres.view(1, -1, 1) * extent.unsqueeze(1) - 0.5  # (B, S, 2) pixel coordinates
    grid = (2 * pixels + 1) / torch.tensor([width, height], device=boxes.device, dtype=boxes.dtype) - 1  # [-1, 1]
    xs, ys = grid[..., 0], grid[..., 1]  # (B, S) each
    grid = torch.stack(torch.broadcast_tensors(xs.unsqueeze(1), ys.unsqueeze(2)), -1)  # (B, S, S, 2): x, y
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class BatchAugment(nn.Module):
    """uint8 images (B, C, H, W) -> augmented, normalised float views (B, C, S, S), S = data.image_size."""

    def __init__(self, data: DataConfig, aug: AugmentConfig):
        super().__init__()
        self.size, self.aug = data.image_size, aug
        s, colour = aug.jitter_strength, data.channels == 3
        self.jitter_ranges = [(max(0.0, 1 - s), 1 + s), (max(0.0, 1 - s), 1 + s)] + \
            ([(max(0.0, 1 - s), 1 + s), (-s / 4, s / 4)] if colour else [(1.0, 1.0), (0.0, 0.0)])
        self.colour = colour
        self.crop_sampler = ResizedCropGenerator((self.size, self.size), (aug.crop_min_scale, 1.0), (3 / 4, 4 / 3))
        self.blur_kernel = blur_kernel_size(self.size)
        self.register_buffer("mean", torch.tensor(data.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def draw(self, count: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """Random parameters of `count` views of (height, width) images: (count, PARAMS), float32."""
        aug, device = self.aug, device or self.mean.device
        params = torch.zeros(count, PARAMS, device=device)
        self.crop_sampler.set_rng_device_and_dtype(device, torch.float32)
        corners = self.crop_sampler(torch.Size([count, 1, height, width]))["src"]  # (count, 4, 2) x, y
        params[:, BOX] = torch.cat([corners[:, 0], corners[:, 2]], 1)  # x0, y0, x1, y1
        params[:, JITTER] = torch.rand(count, device=device) < aug.jitter_prob
        for i, (low, high) in enumerate(self.jitter_ranges):
            params[:, FACTORS.start + i] = torch.empty(count, device=device).uniform_(low, high)
        params[:, ORDER] = torch.rand(count, 4, device=device).argsort(1).float()
        params[:, GRAY] = (torch.rand(count, device=device) < aug.grayscale_prob) & self.colour
        params[:, BLUR] = torch.rand(count, device=device) < aug.blur_prob
        params[:, SIGMA] = torch.empty(count, device=device).uniform_(0.1, 2.0)
        params[:, FLIP] = (torch.rand(count, device=device) < 0.5) & aug.flip
        return params

    @torch.no_grad()
    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The views `params` (B, PARAMS) describe, of uint8 `images` (B, C, H, W): normalised (B, C, S, S)."""
        views = resized_crops(images.float().div_(255), params[:, BOX], self.size)
        views = self._jitter(views.clamp_(0, 1), params)
        gray = params[:, GRAY].bool()
        if gray.any():
            views[gray] = rgb_to_grayscale(views[gray]).expand(-1, 3, -1, -1)
        blur = params[:, BLUR].bool()
        if blur.any():
            sigma = params[blur, SIGMA].unsqueeze(1).expand(-1, 2)  # (b, 2): the same sigma along both axes
            views[blur] = gaussian_blur2d(views[blur], self.blur_kernel, sigma)
        views = torch.where(params[:, FLIP].bool().view(-1, 1, 1, 1), views.flip(-1), views)
        return (views - self.mean) / self.std

    def _jitter(self, views: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation and hue, each image's factors in its own order, where drawn."""
        jittered = params[:, JITTER].bool()
        order = params[:, ORDER].long()
        for step in range(4):
            for op, function in enumerate(JITTER_OPS):
                low, high = self.jitter_ranges[op]
                chosen = jittered & (order[:, step] == op)
                if low == high or not chosen.any():
                    continue  # an operation without range (saturation and hue of grayscale images) changes nothing
                views[chosen] = function(views[chosen], params[chosen, FACTORS.start + op]).clamp_(0, 1)
        return views

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment each image with its own random parameters, then normalise: (B, C, H, W) uint8 -> float."""
        return self.apply(images, self.draw(len(images), *images.shape[-2:], images.device))

    def views(self, *images: torch.Tensor, params: torch.Tensor | None = None,
              memory_format: torch.memory_format = torch.contiguous_format) -> list[torch.Tensor]:
        """One view of each batch in `images`, made in one call: [(B, C, S, S), ...].

        Drawn at random, or rebuilt from `params` (one row per image of the batches, in their order).
        """
        batch = torch.cat(images)
        out = self(batch) if params is None else self.apply(batch, params)
        return list(out.contiguous(memory_format=memory_format).split([len(part) for part in images]))
