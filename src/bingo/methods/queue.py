"""What the methods share across processes: a key queue gathered from all ranks, and shuffle-BN."""

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
