"""What the methods share across processes: a key queue gathered from all ranks, and shuffle-BN (split BatchNorm)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def world() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) outside distributed runs."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@torch.no_grad()
def gather_all(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (B, ...) from every rank in rank order: (world * B, ...). No gradient."""
    size, _ = world()
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class KeyQueue(nn.Module):
    """A FIFO of the `size` most recent keys (size, dim), filled with the keys of all ranks.

    The keys live in a buffer, so they are saved with every checkpoint and restored on resume.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))  # (size, dim)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def snapshot(self) -> torch.Tensor:
        """A copy of the keys (size, dim) to use as negatives while the queue itself moves on."""
        return self.keys.clone()

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue this rank's keys (B, dim) together with every other rank's, dropping the oldest."""
        keys = gather_all(keys.detach().to(self.keys.dtype))  # (world * B, dim)
        slots = (self.ptr + torch.arange(len(keys), device=keys.device)) % len(self.keys)
        self.keys[slots] = keys
        self.ptr.copy_((self.ptr + len(keys)) % len(self.keys))


@torch.no_grad()
def shuffled_forward(encoder: nn.Module, images: torch.Tensor, group: int = 0) -> torch.Tensor:
    """`encoder(images)` with MoCo's shuffle-BN: BatchNorm sees a random sub-batch, never the query's.

    The images of all ranks are gathered, permuted by one permutation shared from rank 0, and each
    rank encodes its slice in groups of `group` images (0: one group), each with its own BatchNorm
    statistics, as MoCo's GPUs (and its single-GPU SplitBatchNorm) do; the outputs come back in the
    original order.
    """
    size, rank = world()
    all_images = gather_all(images)  # (world * B, C, H, W)
    order = torch.randperm(len(all_images), device=images.device)
    if size > 1:
        dist.broadcast(order, src=0)
    mine = all_images[order.view(size, -1)[rank]]  # (B, C, H, W)
    splits = max(1, len(mine) // group) if group > 0 else 1
    outputs = torch.cat([encoder(chunk) for chunk in mine.chunk(splits)])
    restore = torch.argsort(order).view(size, -1)[rank]
    return gather_all(outputs)[restore]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, while training, normalises its batch in groups of about `group` images (len // group equal
    groups, as `shuffled_forward` makes of the keys), each with its own statistics,
    as GPUs of `group` images would (MoCo's single-GPU SplitBatchNorm); the running statistics move by the groups'
    mean. The same parameters and buffers as BatchNorm2d: a checkpoint loads into either."""

    group = 0  # images per group; 0: the whole batch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), normalised per group of `group` images while training."""
        splits = len(images) // self.group if self.group > 0 else 1  # as shuffled_forward splits the keys
        if not self.training or splits <= 1 or self.running_mean is None:
            return super().forward(images)
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        outputs, means, variances = [], [], []
        for chunk in images.chunk(splits):
            mean, variance = self.running_mean.clone(), self.running_var.clone()  # each group moves its own copy
            outputs.append(F.batch_norm(chunk, mean, variance, self.weight, self.bias, True, factor, self.eps))
            means.append(mean)
            variances.append(variance)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outputs)


def split_batchnorm(network: nn.Module, group: int) -> None:
    """Make every BatchNorm2d of `network` a SplitBatchNorm2d of `group` images, in place (parameters, buffers kept)."""
    for module in network.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = SplitBatchNorm2d
            module.group = group
