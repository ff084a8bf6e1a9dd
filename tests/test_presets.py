"""The presets: each loads, and the paper's ImageNet recipe runs a few steps on generated 224 px images."""

from __future__ import annotations

import json

import pytest
import torch

from bingo.config import load_config, preset_names
from bingo.models.encoder import Encoder
from conftest import check_ok, run_cli


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert cfg.data.channels == len(cfg.data.mean) == len(cfg.data.std)


def test_imagenet_preset_is_the_papers_recipe():
    cfg = load_config("imagenet-r18-r50")
    assert (cfg.data.image_size, cfg.teacher.arch, cfg.student.arch) == (224, "resnet50", "resnet18")
    optim, bingo = cfg.distill.optim, cfg.distill.bingo
    assert (optim.epochs, optim.batch_size, optim.lr, optim.momentum, optim.weight_decay) == (200, 256, 0.03, 0.9, 1e-4)
    assert (bingo.queue_size, bingo.temperature, bingo.warmup_epochs) == (65536, 0.2, 10)
    assert (bingo.lam_self, bingo.lam_other, bingo.symmetric, bingo.cutmix) == (0.5, 0.5, True, True)
    assert (cfg.teacher.head_hidden, cfg.student.head_hidden, cfg.bags.k) == (2048, None, 5)  # each method's own head


def test_imagenet_preset_runs_a_few_steps_on_generated_224px_images(tmp_path):
    """A torchvision ResNet-50 teacher in MoCo-v2 layout, bags, then two BINGO steps of a ResNet-18."""
    torch.manual_seed(0)
    teacher = Encoder(load_config("imagenet-r18-r50").teacher, 3)
    state = {f"module.encoder_q.{'fc' + k[4:] if k.startswith('head.') else k[9:]}": v
             for k, v in teacher.state_dict().items()}
    checkpoint = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state}, checkpoint)
    sets = []
    for item in ("data.name=generated", "data.generated_train_size=16", "data.generated_test_size=8",
                 "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
                 "trainer.progress_bar=false", "trainer.limit_train_batches=2", "distill.optim.epochs=1",
                 "distill.optim.batch_size=4",
                 "distill.bingo.queue_size=64", "embed.batch_size=8"):
        sets += ["--set", item]
    common = ["--preset", "imagenet-r18-r50", *sets, "--teacher", checkpoint]
    check_ok(run_cli("bags", *common, "--out", tmp_path / "bags", timeout=300))
    check_ok(run_cli("distill", *common, "--bags", tmp_path / "bags" / "bags.npz", "--out", tmp_path / "r18",
                     timeout=300))
    results = json.loads((tmp_path / "r18" / "results.json").read_text())
    assert (results["method"], results["steps"]) == ("bingo", 2)
    assert (tmp_path / "r18" / "checkpoints" / "last.ckpt").exists()
