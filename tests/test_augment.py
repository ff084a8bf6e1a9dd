"""The batched on-device augmentation is the per-image torchvision augmentation in distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from bingo.config import AugmentConfig, DataConfig
from bingo.data.augment import BatchAugment, resized_crops
from bingo.data.transforms import moco_v2_transform

DRAWS = 3000
KS_CRITICAL = 1.95 * math.sqrt(2 / DRAWS)  # two-sample Kolmogorov-Smirnov at alpha = 0.001


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Largest gap between the two samples' empirical distribution functions."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def data_config(channels: int, size: int = 24) -> DataConfig:
    return DataConfig(name="generated", image_size=size, channels=channels, mean=[0.5] * channels,
                      std=[0.25] * channels)


def test_ks_statistic_tells_different_distributions_apart():
    rng = np.random.default_rng(0)
    same = ks_statistic(rng.uniform(0, 1, DRAWS), rng.uniform(0, 1, DRAWS))
    shifted = ks_statistic(rng.uniform(0, 1, DRAWS), rng.uniform(0.1, 1.1, DRAWS))
    assert same < KS_CRITICAL < shifted


def test_crop_area_and_aspect_ratio_match_torchvision():
    aug = AugmentConfig(crop_min_scale=0.3)
    size = 32
    x0, y0, x1, y1 = BatchAugment(data_config(1, size), aug).draw(DRAWS, size, size)[:, :4].T
    width, height = (x1 - x0 + 1).numpy(), (y1 - y0 + 1).numpy()
    image = Image.new("L", (size, size))
    reference = np.array([T.RandomResizedCrop.get_params(image, (0.3, 1.0), (3 / 4, 4 / 3))[2:]
                          for _ in range(DRAWS)], dtype=np.float64)  # (h, w)
    area, ref_area = width * height / size**2, reference[:, 0] * reference[:, 1] / size**2
    assert ks_statistic(area, ref_area) < KS_CRITICAL
    assert ks_statistic(np.log(width / height), np.log(reference[:, 1] / reference[:, 0])) < KS_CRITICAL
    assert 0.3 - 0.05 < area.min() and area.max() <= 1.0


def draws(channels: int, aug: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAWS augmented views of one structured image by each path: (per-image, batched), (N, C, S, S)."""
    size = 24
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    planes = [(255 * (xx / size) ** (1 + c)).astype(np.uint8) for c in range(channels)]  # bright on the right
    pixels = np.stack(planes, -1)
    pixels[: size // 3] = rng.integers(0, 255, (size // 3, size, channels))  # texture on top
    data = data_config(channels, size)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)
    per_image_transform = moco_v2_transform(data, aug)
    torch.manual_seed(0)
    per_image = torch.stack([per_image_transform(image) for _ in range(DRAWS)])
    batch = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).expand(DRAWS, -1, -1, -1).contiguous()
    batched = BatchAugment(data, aug)(batch)
    return per_image, batched


def statistics(views: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-view statistics that flip, crop, jitter, grayscale and blur each move."""
    half = views.shape[-1] // 2
    stats = {"mean": views.mean((1, 2, 3)), "std": views.std((1, 2, 3)),
             "left-right": views[..., :half].mean((1, 2, 3)) - views[..., half:].mean((1, 2, 3)),
             "top-bottom": views[..., :half, :].mean((1, 2, 3)) - views[..., half:, :].mean((1, 2, 3)),
             "roughness": (views[..., 1:] - views[..., :-1]).abs().mean((1, 2, 3))}
    if views.shape[1] == 3:
        stats["colour spread"] = views.std(1).mean((1, 2))
    return {name: value.numpy() for name, value in stats.items()}


@pytest.mark.parametrize("channels", [1, 3])
def test_views_match_the_per_image_pipeline_in_distribution(channels):
    aug = AugmentConfig(crop_min_scale=0.3, blur_prob=0.5)
    per_image, batched = draws(channels, aug)
    assert batched.shape == per_image.shape and batched.dtype == torch.float32
    reference, mine = statistics(per_image), statistics(batched)
    gaps = {name: ks_statistic(reference[name], mine[name]) for name in reference}
    assert max(gaps.values()) < KS_CRITICAL, gaps


def test_flip_and_jitter_are_drawn_per_image():
    aug = AugmentConfig(crop_min_scale=1.0, jitter_prob=0.8, blur_prob=0.0)
    _, batched = draws(1, aug)
    left_right = statistics(batched)["left-right"]
    flipped = (left_right > 0).mean()  # the image is brighter on the right: flipped views are brighter left
    assert 0.45 < flipped < 0.55
    means = statistics(batched)["mean"]
    assert len(np.unique(means.round(4))) > DRAWS // 2  # jitter factors differ from image to image


def test_a_changed_setting_changes_the_distribution():
    """The comparison above can fail: a stronger jitter moves the statistics past the threshold."""
    per_image, _ = draws(1, AugmentConfig(crop_min_scale=0.3, jitter_strength=0.4))
    _, stronger = draws(1, AugmentConfig(crop_min_scale=0.3, jitter_strength=0.8))
    assert ks_statistic(statistics(per_image)["std"], statistics(stronger)["std"]) > KS_CRITICAL


def test_a_view_is_replayed_exactly_from_its_parameters():
    augment = BatchAugment(data_config(3, 16), AugmentConfig(blur_prob=0.5))
    images = torch.randint(0, 256, (64, 3, 20, 20), dtype=torch.uint8)
    params = augment.draw(64, 20, 20)
    first = augment.apply(images, params)
    order = torch.randperm(64)  # the same views, assembled in another batch order
    assert torch.allclose(augment.apply(images[order], params[order]), first[order], atol=1e-5)
    assert not torch.allclose(augment.apply(images, augment.draw(64, 20, 20)), first)


def test_views_in_one_call_are_independent_and_in_memory_format():
    data = data_config(3, 16)
    augment = BatchAugment(data, AugmentConfig())
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    first, second = augment.views(images, images, memory_format=torch.channels_last)
    assert first.shape == (8, 3, 16, 16) and first.is_contiguous(memory_format=torch.channels_last)
    assert not torch.allclose(first, second)
    assert augment.state_dict() == {}  # nothing of it goes into a checkpoint


@pytest.mark.parametrize("size", [12, 24, 40])  # downscaling, the image's own size, upscaling
def test_crops_are_resized_at_the_output_pixels_centres(size):
    """The crop samples where torchvision's `roi_align` (aligned, one sample per bin) samples: bilinear at the
    output pixels' centres; a whole-image crop at the image's size is the image itself."""
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    images = torch.rand(64, 3, 24, 31)
    boxes = BatchAugment(data_config(3, size), AugmentConfig()).draw(64, 24, 31)[:, :4]
    regions = torch.cat([torch.arange(64.0).unsqueeze(1), boxes[:, :2], boxes[:, 2:] + 1], 1)
    expected = roi_align(images, regions, size, sampling_ratio=1, aligned=True)
    torch.testing.assert_close(resized_crops(images, boxes, size), expected, rtol=0, atol=1e-4)
    square = images[:1, :, :, :24]
    torch.testing.assert_close(resized_crops(square, torch.tensor([[0.0, 0.0, 23.0, 23.0]]), 24), square)
