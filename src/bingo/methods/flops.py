"""Counted training arithmetic: equal time as FLOPs, beside equal wall time (torch.utils.flop_counter)."""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from bingo.config import Config
from bingo.methods import build_method, needs_teacher, resolve_defaults, resolve_pretrain_defaults
from bingo.models.encoder import Encoder


def step_flops_per_sample(cfg: Config, batch: int | None = None) -> float:
    """Counted FLOPs of one training step of cfg's method per sample (an image with its views; BINGO: an anchor with
    a member of its bag): matrix products and convolutions, forward and backward, on random views of `batch`
    samples (default distill.optim.batch_size); neither the optimizer step nor the augmentation is counted."""
    cfg = copy.deepcopy(cfg)
    resolve_defaults(cfg, cfg.distill.method)
    resolve_pretrain_defaults(cfg)  # a teacher head left null: as `bingo pretrain` makes it
    cfg.distill.bingo.warmup_epochs = 0  # every term of the step, as after the warm-up
    batch = batch or cfg.distill.optim.batch_size
    channels, size = cfg.data.channels, cfg.data.image_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = Encoder(cfg.student, channels)
        teacher = Encoder(cfg.teacher, channels) if needs_teacher(cfg) else None
        module = build_method(cfg, student, teacher, {})
        module.train()
        module.log_terms = lambda terms, batch_size: None  # logging needs a Trainer; nothing to count there
        views = [torch.randn(batch, channels, size, size) for _ in range(module.views.count)]
        bag_members = (torch.arange(batch).flip(0),) if module.views.needs_bags else ()
        with FlopCounterMode(display=False) as counter:
            module.training_step((views, torch.zeros(batch, dtype=torch.long), torch.arange(batch), *bag_members),
                                 0).backward()
    return counter.get_total_flops() / batch
