"""Teachers from anywhere: each checkpoint layout of layouts.py, written as its project writes it.

Every file is built here from a random network in that project's key layout, with the other entries
those files carry (key encoder, queue, prototypes, momentum networks, optimizer, arguments...), and
saved in the project's file format. Loaded with the layout detected and forced, and a config whose
head differs (the head's shape is read off the file), it must give the original network's features,
and the original head's embeddings where there is a head.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from bingo.config import DataConfig, ModelConfig
from bingo.errors import UserError
from bingo.methods import build_method
from bingo.models.backbones import build_backbone, count_parameters, resolve_arch
from bingo.models.checkpoints import ENCODER_FORMAT, detect_layout, load_encoder, save_encoder
from bingo.models.encoder import Encoder
from bingo.models.layouts import LAYOUT_NAMES
from conftest import tiny_config, tiny_encoder

TINY = ModelConfig(arch="resnet18", width=8)  # what the projects' ResNet-50s are here: a ResNet-18 of width 8
FEATURES = 64  # its feature dimension
DATA = DataConfig(channels=3, image_size=32)


@dataclasses.dataclass
class Original:
    """A network as its project trains it: backbone, projection head (or None), and the file it writes."""

    backbone: nn.Module
    head: nn.Module | None
    checkpoint: object
    filename: str
    legacy_format: bool = False  # torch.save's pre-1.6 format, as the 2020 releases have it
    model: ModelConfig = dataclasses.field(default_factory=lambda: TINY)


@torch.no_grad()
def randomised(module: nn.Module, seed: int) -> nn.Module:
    """`module` with random weights and BatchNorm statistics, in eval mode (outputs depend on every tensor)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.normal_(0, 0.1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            if m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return module.eval()


def tiny_backbone(seed: int) -> nn.Module:
    """A torchvision-keyed ResNet-18 of width 8 (no fc), as MoCo, DINO, solo-learn and SimCLR's converter build it."""
    return randomised(build_backbone(TINY, 3)[0], seed)


def prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + key: value.clone() for key, value in module.state_dict().items()}


def optimizer_state(module: nn.Module) -> dict:
    """A real SGD state dict after one step (momentum buffers), as training checkpoints keep it."""
    module = copy.deepcopy(module)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    optimizer.zero_grad()
    return optimizer.state_dict()


def moco_v2() -> Original:
    """moco_v2_800ep_pretrain.pth.tar: query and key encoders with fc = Linear-ReLU-Linear, queue, optimizer."""
    backbone, head = tiny_backbone(1), randomised(nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.ReLU(),
                                                                nn.Linear(FEATURES, 16)), 2)
    state = {**prefixed("module.encoder_q.", backbone), **prefixed("module.encoder_q.fc.", head),
             **prefixed("module.encoder_k.", tiny_backbone(3)), **prefixed("module.encoder_k.fc.", head),
             "module.queue": torch.randn(16, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    checkpoint = {"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": optimizer_state(head)}
    return Original(backbone, head, checkpoint, "moco_v2_800ep_pretrain.pth.tar", legacy_format=True)


def moco_v1() -> Original:
    """moco_v1_200ep_pretrain.pth.tar: as v2, but fc is a single Linear(2048, 128)."""
    backbone, head = tiny_backbone(4), randomised(nn.Linear(FEATURES, 16), 5)
    state = {**prefixed("module.encoder_q.", backbone), **prefixed("module.encoder_q.fc.", head),
             **prefixed("module.encoder_k.", backbone), **prefixed("module.encoder_k.fc.", head),
             "module.queue": torch.randn(16, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    checkpoint = {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": optimizer_state(head)}
    return Original(backbone, head, checkpoint, "moco_v1_200ep_pretrain.pth.tar")


def moco_v3_mlp(in_dim: int, hidden: int, out_dim: int, last_bn: bool) -> nn.Sequential:
    """MoCo v3's 2-layer MLP: Linear without bias, BN, ReLU, Linear without bias[, BN without affine]."""
    final = [nn.BatchNorm1d(out_dim, affine=False)] if last_bn else []
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim, bias=False), *final)


def moco_v3() -> Original:
    """r-50-1000ep.pth.tar: base and momentum encoders (fc = projector), predictor, optimizer and AMP scaler."""
    backbone, head = tiny_backbone(6), randomised(moco_v3_mlp(FEATURES, 48, 16, last_bn=True), 7)
    state = {**prefixed("module.base_encoder.", backbone), **prefixed("module.base_encoder.fc.", head),
             **prefixed("module.momentum_encoder.", tiny_backbone(8)),
             **prefixed("module.momentum_encoder.fc.", randomised(moco_v3_mlp(FEATURES, 48, 16, True), 9)),
             **prefixed("module.predictor.", randomised(moco_v3_mlp(16, 48, 16, last_bn=False), 10))}
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 0}
    checkpoint = {"epoch": 1000, "arch": "resnet50", "state_dict": state, "optimizer": optimizer_state(head),
                  "scaler": scaler}
    return Original(backbone, head, checkpoint, "r-50-1000ep.pth.tar")


def swav_stem(backbone: nn.Module) -> nn.Module:
    """The same network with SwAV's stem: ConstantPad2d(1) then the 7x7 conv with padding 2 (src/resnet50.py)."""
    swav = copy.deepcopy(backbone)
    conv = nn.Conv2d(3, backbone.conv1.out_channels, 7, 2, 2, bias=False)
    conv.weight = backbone.conv1.weight
    swav.conv1 = nn.Sequential(nn.ConstantPad2d(1, 0.0), conv)
    return swav


def swav() -> Original:
    """swav_800ep_pretrain.pth.tar: a plain state dict of module.* keys, projection head and prototypes."""
    backbone = tiny_backbone(11)
    head = randomised(nn.Sequential(nn.Linear(FEATURES, 96), nn.BatchNorm1d(96), nn.ReLU(), nn.Linear(96, 16)), 12)
    state = {**prefixed("module.", backbone), **prefixed("module.projection_head.", head),
             "module.prototypes.weight": torch.randn(30, 16)}
    return Original(swav_stem(backbone), head, state, "swav_800ep_pretrain.pth.tar", legacy_format=True)


def dino_head_state(seed: int) -> dict[str, torch.Tensor]:
    """DINO's head: mlp (Linear-GELU-Linear-GELU-Linear to the bottleneck) and a weight-normalised last layer."""
    mlp = randomised(nn.Sequential(nn.Linear(FEATURES, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(),
                                   nn.Linear(32, 8)), seed)
    return {**prefixed("mlp.", mlp), "last_layer.weight_g": torch.ones(100, 1),
            "last_layer.weight_v": torch.randn(100, 8)}


def dino_full() -> Original:
    """dino_resnet50_pretrain_full_checkpoint.pth: DDP student and teacher, optimizer, arguments, loss center."""
    backbone = tiny_backbone(13)
    teacher = {**prefixed("module.backbone.", backbone),
               **{f"module.head.{k}": v for k, v in dino_head_state(14).items()}}
    student = {**prefixed("module.backbone.", tiny_backbone(15)),
               **{f"module.head.{k}": v for k, v in dino_head_state(16).items()}}
    args = argparse.Namespace(arch="resnet50", out_dim=100, use_bn_in_head=False, lr=0.03, optimizer="sgd")
    checkpoint = {"student": student, "teacher": teacher, "optimizer": optimizer_state(tiny_backbone(0)),
                  "epoch": 800, "args": args, "dino_loss": {"center": torch.zeros(1, 100)},
                  "fp16_scaler": {"scale": 1024.0, "growth_factor": 2.0}}
    return Original(backbone, None, checkpoint, "dino_resnet50_pretrain_full_checkpoint.pth")


def dino_backbone() -> Original:
    """dino_resnet50_pretrain.pth: the backbone alone, plain torchvision keys, no fc."""
    backbone = tiny_backbone(17)
    return Original(backbone, None, prefixed("", backbone), "dino_resnet50_pretrain.pth")


def byol() -> Original:
    """solo-learn's BYOL .ckpt: backbone, projector, momentum twins, predictor, online classifier, Lightning state."""
    def projector(seed: int, in_dim: int = FEATURES) -> nn.Module:
        return randomised(nn.Sequential(nn.Linear(in_dim, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 16)), seed)
    backbone, head = tiny_backbone(18), projector(19)
    state = {**prefixed("backbone.", backbone), **prefixed("projector.", head),
             **prefixed("momentum_backbone.", tiny_backbone(20)), **prefixed("momentum_projector.", projector(21)),
             **prefixed("predictor.", projector(22, in_dim=16)), **prefixed("classifier.", nn.Linear(FEATURES, 10))}
    checkpoint = {"epoch": 399, "global_step": 1000, "pytorch-lightning_version": "2.2.0", "state_dict": state,
                  "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 400}}}},
                  "callbacks": {}, "optimizer_states": [optimizer_state(head)],
                  "lr_schedulers": [{"last_epoch": 1000, "base_lrs": [1.0]}]}
    return Original(backbone, head, checkpoint, "byol-imagenet-ep=399.ckpt")


def simclr() -> Original:
    """tonylins/simclr-converter's resnet50-1x.pth: {'state_dict': torchvision keys with a supervised fc}."""
    backbone = tiny_backbone(23)
    fc = nn.Linear(FEATURES, 1000)
    return Original(backbone, None, {"state_dict": {**prefixed("", backbone), **prefixed("fc.", fc)}},
                    "resnet50-1x.pth")


def torchvision_resnet() -> Original:
    """torch.save(torchvision.models.resnet18().state_dict()): the stock model with its classifier."""
    model = randomised(torchvision.models.resnet18(num_classes=10), 24)
    backbone = copy.deepcopy(model)
    backbone.fc = nn.Identity()
    return Original(backbone, None, model.state_dict(), "resnet18.pth", model=ModelConfig(arch="resnet18"))


class TimmFeatures(nn.Module):
    """A timm classifier's pooled features (what comes before its classifier)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


def timm_model() -> Original:
    """A timm model's model.safetensors (as on the Hugging Face hub), classifier included."""
    model = randomised(timm.create_model("mobilenetv3_small_050", num_classes=10), 25)
    return Original(TimmFeatures(model), None, model.state_dict(), "model.safetensors",
                    model=ModelConfig(arch="mobilenetv3_small_050"))


LAYOUT_FILES = {"moco": [moco_v2, moco_v1], "mocov3": [moco_v3], "swav": [swav], "dino": [dino_full, dino_backbone],
                "byol": [byol], "simclr": [simclr], "torchvision": [torchvision_resnet], "timm": [timm_model]}
DETECTED = {"dino_backbone": "torchvision"}  # plain torchvision keys: nothing in the file says DINO


def save(original: Original, folder) -> str:
    path = folder / original.filename
    if path.suffix == ".safetensors":
        save_file(original.checkpoint, str(path))
    else:
        torch.save(original.checkpoint, path, _use_new_zipfile_serialization=not original.legacy_format)
    return path


@pytest.mark.parametrize("layout,build", [(name, build) for name, builds in LAYOUT_FILES.items() for build in builds],
                         ids=lambda value: getattr(value, "__name__", value))
def test_every_layout_loads_with_the_original_features_and_head(tmp_path, layout, build):
    original = build()
    path = save(original, tmp_path)
    assert detect_layout(path) == DETECTED.get(build.__name__, layout)
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = original.backbone(images)
        embeddings = None if original.head is None else F.normalize(original.head(features), dim=1)
        for forced in ("auto", layout):
            encoder = load_encoder(path, dataclasses.replace(original.model, layout=forced), DATA).eval()
            torch.testing.assert_close(encoder.features(images), features, rtol=1e-5, atol=1e-5)
            if embeddings is None:
                assert encoder.head is None and encoder.embed_dim == 0
            else:
                torch.testing.assert_close(encoder(images), embeddings, rtol=1e-5, atol=1e-5)


def test_bingo_files_detected_and_forced(tmp_path):
    path = tmp_path / "teacher.safetensors"
    model = ModelConfig(arch="resnet18", width=8, head_hidden=32, embed_dim=16)
    save_encoder(randomised(Encoder(model, 3), 26), model, DATA, path)
    assert detect_layout(path) == "bingo"
    for forced in ("auto", "bingo"):
        load_encoder(path, ModelConfig(layout=forced), DATA)
    with pytest.raises(UserError, match="is a bingo encoder file, but the layout is set to 'moco'; set it to auto"):
        load_encoder(path, ModelConfig(layout="moco"), DATA)


def test_bingo_files_from_before_stem_width_keep_their_64_channel_stem(tmp_path):
    """Widened ResNets used to be timm's, whose stem stays at 64 channels; such files still load, unchanged."""
    old_backbone = randomised(timm.create_model("resnet18", num_classes=0, channels=(8, 16, 32, 64), stem_width=8), 27)
    assert old_backbone.conv1.out_channels == 64
    head = randomised(nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 16)), 28)
    old_model = {"arch": "resnet18", "width": 8, "stem": "imagenet", "head_hidden": 32, "head_bn": False,
                 "embed_dim": 16}
    meta = {"format": ENCODER_FORMAT, "model": json.dumps(old_model),
            "data": json.dumps({"name": "generated", "channels": 3, "image_size": 32, "mean": [0.5] * 3,
                                "std": [0.25] * 3})}
    path = tmp_path / "old.safetensors"
    save_file({**prefixed("backbone.", old_backbone), **prefixed("head.", head)}, str(path), metadata=meta)
    images = torch.randn(2, 3, 32, 32)
    encoder = load_encoder(path, ModelConfig(), DATA).eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder.features(images), old_backbone(images), rtol=0, atol=0)


def test_forced_wrong_or_unknown_layout_is_refused(tmp_path):
    moco_file, plain_file = save(moco_v2(), tmp_path), save(dino_backbone(), tmp_path)
    with pytest.raises(UserError, match=r"moco_v2_800ep_pretrain.pth.tar does not hold a mocov3 checkpoint \(MoCo v3"):
        load_encoder(moco_file, dataclasses.replace(TINY, layout="mocov3"), DATA)
    with pytest.raises(UserError, match="does not hold a moco checkpoint"):
        load_encoder(plain_file, dataclasses.replace(TINY, layout="moco"), DATA)
    with pytest.raises(UserError, match=r"\(swav layout\) does not fit the configured architecture.* unexpected: "
                                        r"backbone\.encoder_k\."):
        load_encoder(moco_file, dataclasses.replace(TINY, layout="swav"), DATA)
    with pytest.raises(UserError, match="is not a bingo encoder file, but the layout is set to 'bingo'"):
        load_encoder(moco_file, dataclasses.replace(TINY, layout="bingo"), DATA)
    with pytest.raises(UserError, match="unknown checkpoint layout 'mocov2'; choose auto or one of: bingo, moco, "):
        load_encoder(moco_file, dataclasses.replace(TINY, layout="mocov2"), DATA)


def test_unknown_layout_names_the_known_ones():
    with pytest.raises(UserError) as err:
        detect_layout({"encoder.weird.weight": torch.zeros(1), "other.bias": torch.zeros(1)})
    assert str(err.value) == (f"the checkpoint is in no checkpoint layout bingo knows ({', '.join(LAYOUT_NAMES)}); "
                              "if it is one of them, force it with --set teacher.layout=NAME (student.layout for a "
                              "student)")


def test_checkpoint_for_another_architecture_is_refused_with_a_short_summary(tmp_path):
    path = save(swav(), tmp_path)
    with pytest.raises(UserError) as err:
        load_encoder(path, ModelConfig(arch="resnet34", width=8), DATA)
    message = str(err.value)
    assert "(swav layout) does not fit the configured architecture (resnet34 of width 8); keys" in message
    assert "missing: backbone.layer1.2." in message and "\n" not in message and len(message) < 400
    with pytest.raises(UserError, match=r"of another shape: backbone\.bn1\.bias, backbone\.bn1\.running_mean"):
        load_encoder(path, ModelConfig(arch="resnet18", width=16), DATA)


class Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("filename", ["teacher.pth", "teacher.pth.tar", "teacher.ckpt"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickles_are_refused_without_running(tmp_path, filename, legacy):
    marker = tmp_path / "MARKER"
    path = tmp_path / filename
    torch.save({"state_dict": prefixed("module.encoder_q.", tiny_backbone(0)), "payload": Exploit(str(marker))}, path,
               _use_new_zipfile_serialization=not legacy)
    for load in (lambda: load_encoder(path, TINY, DATA), lambda: detect_layout(path)):
        with pytest.raises(UserError, match=f"{filename} needs arbitrary code to unpickle and was refused"):
            load()
    assert not marker.exists()


def test_headless_teacher_is_refused_by_methods_that_need_its_embeddings(tmp_path):
    cfg = tiny_config()
    teacher = load_encoder(save(dino_backbone(), tmp_path), TINY, DATA)
    assert teacher.head is None
    for method in ("bingo", "seed", "disco"):
        cfg.distill.method = method
        with pytest.raises(UserError) as err:
            build_method(cfg, tiny_encoder(), teacher, {})
        assert str(err.value).startswith(f"the teacher has no projection head (its checkpoint holds a backbone "
                                         f"only), so {method} cannot distil its embeddings; compress-1q, compress-2q "
                                         "and simreg can")
        assert "distill.bingo.keys=momentum" in str(err.value) and "\n" not in str(err.value)
    wide_student = Encoder(ModelConfig(arch="resnet18", width=8, stem="cifar", head_hidden=32, embed_dim=FEATURES), 3)
    for method, student in (("simreg", tiny_encoder()), ("compress-2q", tiny_encoder()),
                            ("compress-1q", wide_student), ("bingo", tiny_encoder())):
        cfg.distill.method = method
        cfg.distill.bingo.keys = "momentum"
        assert build_method(cfg, student, teacher, {}).teacher is (None if method == "bingo" else teacher)


def test_swav_widths_are_swavs_own_widened_resnet50():
    """resnet50w2 has every tensor of SwAV's RN50w2 (src/resnet50.py), 94M parameters, and SwAV's outputs."""
    backbone, dim = build_backbone(ModelConfig(arch="resnet50w2"), 3)
    assert dim == 4096 and round(count_parameters(backbone) / 1e6) == 94  # SwAV's README: 94M
    widen, inplanes, expected = 2, 128, {"conv1.weight": (128, 3, 7, 7), "bn1.weight": (128,)}
    for stage, blocks in enumerate((3, 4, 6, 3)):
        planes = 64 * widen * 2**stage
        for block in range(blocks):
            name = f"layer{stage + 1}.{block}."
            expected |= {name + "conv1.weight": (planes, inplanes, 1, 1), name + "conv2.weight": (planes, planes, 3, 3),
                         name + "conv3.weight": (4 * planes, planes, 1, 1), name + "bn1.weight": (planes,),
                         name + "bn2.weight": (planes,), name + "bn3.weight": (4 * planes,)}
            if block == 0:
                expected |= {name + "downsample.0.weight": (4 * planes, inplanes, 1, 1),
                             name + "downsample.1.weight": (4 * planes,)}
            inplanes = 4 * planes
    shapes = {k: tuple(v.shape) for k, v in backbone.state_dict().items() if k.endswith("weight")}
    assert shapes == expected
    randomised(backbone, 29)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), swav_stem(backbone)(images), rtol=1e-4, atol=1e-5)


def test_swav_width_aliases():
    assert resolve_arch(ModelConfig(arch="resnet50w4", width=256)) == ("resnet50", 256)
    assert resolve_arch(ModelConfig(arch="resnet50w5")) == ("resnet50", 320)
    with pytest.raises(UserError, match="resnet50w2 is resnet50 of width 128; leave width at 64 or set it to 128"):
        build_backbone(ModelConfig(arch="resnet50w2", width=256), 3)
    with pytest.raises(UserError, match="model width applies to the torchvision ResNets"):
        build_backbone(ModelConfig(arch="mobilenetv3_small_050", width=32), 3)
