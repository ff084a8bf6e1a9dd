"""BINGO and MoCo modules: warm-up weights, the training step's queue and gradients, frozen teachers, train modes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import bingo.methods.bingo as bingo_module
from bingo.bags.files import NeighbourBags, save_bags
from bingo.bags.knn import knn_bags
from bingo.config import BingoConfig, MoCoConfig, ModelConfig, OptimConfig
from bingo.data.datasets import build_dataset
from bingo.data.views import Views
from bingo.methods import Bingo, MoCo
from bingo.methods.base import lr_factor
from bingo.methods.losses import bingo_loss
from bingo.methods.queue import KeyQueue
from bingo.models.checkpoints import save_encoder
from bingo.stages import distill as distill_stage
from bingo.training import fit
from conftest import BATCH, EMBED, tiny_config, tiny_encoder, tiny_model_config

B = 8  # batch of the hand-driven training steps


def make_bingo(queue_size: int = 32, **bingo_kwargs) -> Bingo:
    cfg = BingoConfig(queue_size=queue_size, **bingo_kwargs)
    return Bingo(student=tiny_encoder(0), teacher=tiny_encoder(1), optim=OptimConfig(epochs=1, batch_size=B), bingo=cfg)


def bag_batch(seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, 16, 16, generator=g) for _ in range(4)]
    return views, torch.zeros(B, dtype=torch.long), torch.arange(B), torch.arange(B).flip(0)


def set_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    monkeypatch.setattr(Bingo, "current_epoch", property(lambda self: epoch))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Arguments of every bingo_loss call made by Bingo.training_step."""
    calls = []
    real = bingo_module.bingo_loss

    def spy(anchor, positive, mixed, anchor_keys, positive_keys, negatives, temperature, lam_self, lam_other,
            lam_mix):
        calls.append({"anchor": anchor, "positive": positive, "mixed": mixed, "ya": anchor_keys,
                      "yp": positive_keys, "negatives": negatives, "lam_self": lam_self,
                      "lam_other": lam_other, "lam_mix": lam_mix})
        return real(anchor, positive, mixed, anchor_keys, positive_keys, negatives, temperature, lam_self,
                    lam_other, lam_mix)

    monkeypatch.setattr(bingo_module, "bingo_loss", spy)
    monkeypatch.setattr(Bingo, "log_terms", lambda self, terms, batch_size: None)  # self.log needs a Trainer
    return calls


def test_fractional_warmup_switches_within_the_epoch():
    module = make_bingo(warmup_epochs=0.25, lam_self=0.7, lam_other=0.3)
    assert module.loss_weights(0.2) == (1.0, 0.0)
    assert module.loss_weights(0.25) == module.loss_weights(1.0) == (0.7, 0.3)


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_loss_weights_warmup(monkeypatch, warmup):
    module = make_bingo(warmup_epochs=warmup, lam_self=0.7, lam_other=0.3)
    for epoch in range(6):
        set_epoch(monkeypatch, epoch)
        assert module.loss_weights() == ((1.0, 0.0) if epoch < warmup else (0.7, 0.3))


def test_training_step_queue_gets_anchor_keys_after_the_loss(monkeypatch, captured):
    module = make_bingo(queue_size=32, warmup_epochs=2, lam_self=0.7, lam_other=0.3)
    module.train()
    assert module.student.training and not module.teacher.training
    initial = module.queue.keys.clone()
    batch = bag_batch(0)
    anchor_query, anchor_key, positive_query, positive_key = batch[0]

    set_epoch(monkeypatch, 0)
    loss = module.training_step(batch, 0)
    call = captured[0]
    assert (call["lam_self"], call["lam_other"]) == (1.0, 0.0)  # warm-up
    assert 0.0 <= call["lam_mix"] <= 1.0
    # The loss saw the queue as it was before this batch: enqueue comes after the loss.
    torch.testing.assert_close(call["negatives"], initial, rtol=0, atol=0)
    # Student queries: za = S(t1(a)), zp = S(t3(p)) (train-mode BN, deterministic for a batch).
    torch.testing.assert_close(call["anchor"], module.student(anchor_query))
    torch.testing.assert_close(call["positive"], module.student(positive_query))
    # Teacher keys under the eval-mode teacher, computed separately.
    teacher = module.teacher.eval()
    with torch.no_grad():
        ya, yp = teacher(anchor_key), teacher(positive_key)
    torch.testing.assert_close(call["ya"], ya, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call["yp"], yp, rtol=1e-5, atol=1e-5)
    # The queue now holds exactly the anchor keys ya, in the first B rows; the rest is untouched.
    assert int(module.queue.ptr) == B
    torch.testing.assert_close(module.queue.keys[:B], ya, rtol=1e-5, atol=1e-5)
    assert (module.queue.keys[:B] - yp).abs().max() > 1e-2  # not the positive keys
    torch.testing.assert_close(module.queue.keys[B:], initial[B:], rtol=0, atol=0)
    expected = (call["anchor"], call["positive"], call["mixed"])
    assert all(t is not None for t in expected)
    assert loss.requires_grad and loss.item() == pytest.approx(
        bingo_loss(call["anchor"], call["positive"], call["mixed"], ya, yp, initial, 0.2, 1.0, 0.0,
                                call["lam_mix"])["loss"].item(), rel=1e-4)

    # Second step after the warm-up: configured weights, and the negatives are the queue after step 1.
    after_first = module.queue.keys.clone()
    set_epoch(monkeypatch, 2)
    module.training_step(bag_batch(1), 1)
    assert (captured[1]["lam_self"], captured[1]["lam_other"]) == (0.7, 0.3)
    torch.testing.assert_close(captured[1]["negatives"], after_first, rtol=0, atol=0)
    assert int(module.queue.ptr) == 2 * B
    torch.testing.assert_close(module.queue.keys[B:2 * B], captured[1]["ya"], rtol=0, atol=0)


def test_training_step_no_gradient_into_teacher_or_queue(captured):
    module = make_bingo()
    module.train()
    loss = module.training_step(bag_batch(0), 0)
    loss.backward()
    call = captured[0]
    for name in ("negatives", "ya", "yp"):
        assert not call[name].requires_grad, name
    assert not module.queue.keys.requires_grad
    for name, param in module.teacher.named_parameters():
        assert not param.requires_grad and param.grad is None, name
    student_grads = [p.grad for p in module.student.parameters()]
    assert all(g is not None for g in student_grads)
    assert sum(float(g.abs().sum()) for g in student_grads) > 0
    # The optimizer only sees the student.
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in module.student.parameters()}


def test_ablation_switches_drop_terms(captured):
    module = make_bingo(symmetric=False, cutmix=False)
    module.train()
    module.training_step(bag_batch(0), 0)
    assert captured[0]["positive"] is None and captured[0]["mixed"] is None and captured[0]["lam_mix"] == 1.0


def test_key_queue_wraps_around():
    queue = KeyQueue(12, 4)
    first = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    second = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    queue.push(first)
    assert int(queue.ptr) == 8
    queue.push(second)
    assert int(queue.ptr) == 4  # (8 + 8) % 12
    torch.testing.assert_close(queue.keys[8:12], second[:4])
    torch.testing.assert_close(queue.keys[0:4], second[4:])
    torch.testing.assert_close(queue.keys[4:8], first[4:])
    snapshot = queue.snapshot()
    queue.push(first[:2])
    assert not torch.equal(snapshot[4:6], queue.keys[4:6])  # the snapshot is a copy
    assert {"keys", "ptr"} <= set(queue.state_dict())  # saved with checkpoints


def test_lr_factor_warmup_and_cosine():
    assert lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20) == pytest.approx(0.5)
    assert lr_factor(20, 4, 20) == pytest.approx(0.0)
    assert lr_factor(10, 0, 20) == pytest.approx(0.5)


# --- the teacher stays frozen through a real (in-process) distillation -------------------------

def _bn_layers(encoder: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _distill_inputs(tmp_path, *extra: str):
    """A teacher file with non-trivial BN statistics and a bag file for the tiny generated data."""
    cfg = tiny_config(*extra)
    teacher = tiny_encoder(5)
    g = torch.Generator().manual_seed(3)
    for bn in _bn_layers(teacher):
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
    teacher_file = tmp_path / "teacher.safetensors"
    save_encoder(teacher, tiny_model_config(), cfg.data, teacher_file)
    data = build_dataset(cfg.data, "train")
    feats = np.random.default_rng(0).normal(size=(len(data), 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    neighbours, sims = knn_bags(feats, 3)
    bags_file = tmp_path / "bags.npz"
    meta = {"strategy": "knn", "kind": "neighbours", "k": 3, "dataset": data.identity,
            "source": {"kind": "features", "path": "random"}}
    save_bags(bags_file, NeighbourBags(neighbours, meta, sims))
    cfg.teacher.checkpoint, cfg.distill.bags = str(teacher_file), str(bags_file)
    return cfg, teacher.state_dict()


@pytest.fixture
def step_modes(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The train/eval flags of student and teacher seen at every Bingo training step."""
    seen = []
    real = Bingo.training_step

    def spy(self, batch, batch_idx):
        seen.append({"student": self.student.training, "teacher": self.teacher.training,
                     "teacher_bn": [bn.training for bn in _bn_layers(self.teacher)],
                     "momentum": {bn.momentum for bn in _bn_layers(self.teacher)}})
        return real(self, batch, batch_idx)

    monkeypatch.setattr(Bingo, "training_step", spy)
    return seen


def _teacher_state_in_checkpoint(out) -> dict[str, torch.Tensor]:
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k[len("teacher."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("teacher.")}


def test_teacher_unchanged_in_eval_bn_mode(tmp_path, step_modes):
    cfg, before = _distill_inputs(tmp_path)
    assert cfg.distill.teacher_bn == "eval"
    distill_stage.run_distill(cfg, tmp_path / "run")
    assert len(step_modes) == 128 // BATCH
    assert all(s["student"] and not s["teacher"] and not any(s["teacher_bn"]) for s in step_modes)
    after = _teacher_state_in_checkpoint(tmp_path / "run")
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # parameters, running stats and num_batches_tracked


def test_teacher_running_stats_unchanged_in_train_bn_mode(tmp_path, step_modes):
    cfg, before = _distill_inputs(tmp_path, "distill.teacher_bn=train")
    distill_stage.run_distill(cfg, tmp_path / "run")
    assert len(step_modes) == 128 // BATCH
    # Batch statistics in use: the teacher's BN layers really are in training mode, with momentum 0.
    assert all(s["student"] and s["teacher"] and all(s["teacher_bn"]) for s in step_modes)
    assert all(s["momentum"] == {0.0} for s in step_modes)
    after = _teacher_state_in_checkpoint(tmp_path / "run")
    for key, value in before.items():
        if key.endswith("num_batches_tracked"):
            continue  # a counter BN increments in train mode; unused when momentum is set
        assert torch.equal(after[key], value), key


def test_moco_key_encoder_runs_in_train_mode(tmp_path, monkeypatch):
    """MoCo's key encoder uses batch statistics (shuffle-BN), as in MoCo; its BN statistics follow the data."""
    cfg = tiny_config("distill.optim.batch_size=16", "trainer.limit_train_batches=2")
    data = build_dataset(cfg.data, "train")
    module = MoCo(student=tiny_encoder(0), optim=cfg.distill.optim, moco=MoCoConfig(queue_size=64, momentum=0.99))
    key_bn_before = {k: v.clone() for k, v in module.key_encoder.encoder.state_dict().items() if "running_mean" in k}
    seen = []
    real = MoCo.training_step

    def spy(self, batch, batch_idx):
        seen.append((self.student.training, self.key_encoder.encoder.training))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(MoCo, "training_step", spy)
    from bingo.data.transforms import moco_v2_transform
    fit(module, Views(data, moco_v2_transform(cfg.data, cfg.augment), 2), cfg, cfg.distill.optim, tmp_path, False)
    assert seen == [(True, True), (True, True)]
    assert int(module.queue.ptr) == 2 * 16
    after = module.key_encoder.encoder.state_dict()
    assert all(not torch.equal(after[k], v) for k, v in key_bn_before.items())
    assert module.queue.keys.shape == (64, EMBED)


def test_batchnorm_calibration_changes_statistics_not_weights():
    from bingo.bags.features import calibrate_batchnorm
    from bingo.data.datasets import build_dataset
    from conftest import tiny_config

    cfg = tiny_config()
    encoder = tiny_encoder(0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    calibrate_batchnorm(encoder, build_dataset(cfg.data, "train"), cfg.data, cfg.augment, batches=2, batch_size=32)
    after = encoder.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(not torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(before[k], after[k]) for k in weights)
    assert not encoder.training


def test_bingo_refuses_a_student_embedding_of_another_size():
    from bingo.errors import UserError
    from bingo.models.encoder import Encoder

    teacher = tiny_encoder(1)
    student = Encoder(ModelConfig(arch="resnet18", width=8, stem="cifar", head_hidden=32, embed_dim=8), 3)
    with pytest.raises(UserError, match="set student.embed_dim=16"):
        Bingo(student=student, teacher=teacher, optim=OptimConfig(epochs=1, batch_size=8),
              bingo=BingoConfig(queue_size=32))


def test_momentum_update_is_the_exponential_moving_average():
    from bingo.methods.momentum import MomentumEncoder

    source = tiny_encoder(0)
    follower = MomentumEncoder(source, momentum=0.9)
    before = [p.detach().clone() for p in follower.encoder.parameters()]
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
    follower.update(source)
    for old, new, target in zip(before, follower.encoder.parameters(), source.parameters(), strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * target, atol=1e-6)
    assert not any(p.requires_grad for p in follower.encoder.parameters())


@pytest.mark.parametrize("group, groups", [(0, 1), (32, 1), (4, 4), (5, 3)])
def test_shuffle_bn_computes_batchnorm_over_groups_of_the_shuffled_batch(group, groups):
    from bingo.methods.queue import shuffled_forward

    norm = nn.BatchNorm1d(3).train()
    images = torch.randn(16, 3) * torch.arange(1, 17).unsqueeze(1)  # images with very different statistics
    torch.manual_seed(0)
    outputs = shuffled_forward(norm, images, group)
    torch.manual_seed(0)
    order = torch.randperm(16)
    expected = torch.cat([norm(chunk) for chunk in images[order].chunk(groups)])[torch.argsort(order)]
    torch.testing.assert_close(outputs, expected)  # each image normalised with its own group's statistics
    if groups > 1:
        assert not torch.allclose(outputs, norm(images), atol=1e-3)  # not the whole batch's


def test_split_batchnorm_normalises_each_group_with_its_own_statistics_while_training():
    """MoCo's SplitBatchNorm: in training, each group of `group` images is normalised by its own statistics and the
    running statistics move by the groups' mean; in evaluation it is the plain BatchNorm; a checkpoint fits both."""
    from bingo.methods.queue import SplitBatchNorm2d, split_batchnorm

    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    plain = copy.deepcopy(network)
    split_batchnorm(network, 4)
    assert isinstance(network[1], SplitBatchNorm2d) and network.state_dict().keys() == plain.state_dict().keys()
    images = torch.randn(12, 3, 6, 6) * torch.arange(1, 13).view(-1, 1, 1, 1)  # groups with different statistics
    outputs = network.train()(images)
    groups = [copy.deepcopy(plain).train() for _ in range(3)]
    expected = torch.cat([g(chunk) for g, chunk in zip(groups, images.split(4), strict=True)])
    torch.testing.assert_close(outputs, expected)
    assert not torch.allclose(outputs, copy.deepcopy(plain).train()(images), atol=1e-3)  # not the whole batch's
    for name in ("running_mean", "running_var"):
        mean = torch.stack([getattr(g[1], name) for g in groups]).mean(0)
        torch.testing.assert_close(getattr(network[1], name), mean)
    plain.load_state_dict(network.state_dict())
    torch.testing.assert_close(network.eval()(images), plain.eval()(images))
    outputs.sum().backward()  # gradients flow through every group
    assert network[0].weight.grad is not None and network[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("split", [False, True])
def test_split_queries_splits_the_students_batchnorm_and_its_momentum_copys(split):
    from bingo.methods.queue import SplitBatchNorm2d

    module = MoCo(student=tiny_encoder(0), optim=OptimConfig(),
                  moco=MoCoConfig(queue_size=16, shuffle_bn_group=4, split_queries=split))
    for network in (module.student, module.key_encoder.encoder):
        kinds = {type(m) for m in network.modules() if isinstance(m, nn.BatchNorm2d)}
        assert kinds == ({SplitBatchNorm2d} if split else {nn.BatchNorm2d})
        assert all(m.group == 4 for m in network.modules() if isinstance(m, SplitBatchNorm2d))


def test_split_queries_without_groups_is_refused_in_one_line(tmp_path, capsys):
    from bingo.cli import main
    from conftest import tiny_sets

    out = tmp_path / "moco"
    code = main(["distill", "--method", "moco", "--preset", "demo", "--out", str(out),
                 *tiny_sets("distill.moco.split_queries=true", "distill.moco.shuffle_bn_group=0")])
    assert code == 2 and not (out / "student.safetensors").exists()
    assert "moco.split_queries=true normalises the queries in groups of" in capsys.readouterr().err
