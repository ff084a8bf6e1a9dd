"""Encoder files: bingo's safetensors, MoCo v2 checkpoints, refusals (wrong input format, missing keys, pickles).

Every other layout (MoCo v1/v3, SwAV, DINO, BYOL, SimCLR, torchvision, timm) is in test_layouts.py.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from bingo.config import DataConfig, ModelConfig
from bingo.errors import UserError
from bingo.models.checkpoints import encoder_info, load_encoder, save_encoder
from bingo.models.encoder import Encoder
from conftest import tiny_config, tiny_encoder, tiny_model_config


def embeddings(encoder: Encoder, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(x)


def test_bingo_encoder_round_trip(tmp_path):
    cfg = tiny_config()
    encoder = tiny_encoder(3)
    path = tmp_path / "enc.safetensors"
    save_encoder(encoder, tiny_model_config(), cfg.data, path)
    model, trained_on = encoder_info(path)
    assert (model.arch, model.width, model.stem, model.head_hidden, model.embed_dim) == ("resnet18", 8, "cifar", 32, 16)
    assert trained_on == {"name": "generated", "channels": 3, "image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}
    # The file brings its own architecture: the configured one is ignored.
    loaded = load_encoder(path, ModelConfig(arch="resnet50"), cfg.data)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(embeddings(loaded, x), embeddings(encoder, x), rtol=0, atol=0)


@pytest.mark.parametrize("extra,message", [
    (("data.image_size=24", "data.eval_resize=24"),
     "trained on 3-channel 16 px images but this run uses 3-channel 24 px"),
    (("data.channels=1", "data.mean=[0.5]", "data.std=[0.25]"), "uses 1-channel 16 px"),
])
def test_wrong_input_format_is_refused(tmp_path, extra, message):
    path = tmp_path / "enc.safetensors"
    save_encoder(tiny_encoder(), tiny_model_config(), tiny_config().data, path)
    with pytest.raises(UserError, match=message):
        load_encoder(path, tiny_model_config(), tiny_config(*extra).data)


def moco_v2_checkpoint(encoder: Encoder) -> dict:
    """The layout of moco_v2_800ep_pretrain.pth.tar: query and key encoders, fc.0/fc.2 head, queue."""
    state = {}
    for prefix in ("module.encoder_q.", "module.encoder_k."):
        for key, value in encoder.backbone.state_dict().items():
            state[prefix + key] = value.clone()
        for key, value in encoder.head.state_dict().items():  # head.0 / head.2 -> fc.0 / fc.2
            state[prefix + "fc." + key] = value.clone()
    state["module.queue"] = torch.randn(128, 65536 // 512)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 800, "arch": "resnet18", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


@pytest.fixture(scope="module")
def moco_encoder() -> Encoder:
    torch.manual_seed(7)
    encoder = Encoder(ModelConfig(arch="resnet18", width=64, stem="cifar"), 3)
    for module in encoder.modules():  # non-trivial BN statistics, so eval-mode outputs depend on them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return encoder


def test_moco_v2_checkpoint_loads_with_identical_embeddings(tmp_path, moco_encoder):
    keys = set(moco_encoder.backbone.state_dict())
    assert "conv1.weight" in keys and "layer4.1.bn2.running_var" in keys and not any(k.startswith("fc") for k in keys)
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(moco_v2_checkpoint(moco_encoder), path)
    data = DataConfig(channels=3, image_size=32)
    loaded = load_encoder(path, ModelConfig(arch="resnet18", width=64, stem="cifar"), data)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(embeddings(loaded, x), embeddings(moco_encoder, x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.features(x), moco_encoder.features(x), rtol=0, atol=0)


def test_moco_v2_checkpoint_with_missing_key_is_refused(tmp_path, moco_encoder):
    checkpoint = moco_v2_checkpoint(moco_encoder)
    del checkpoint["state_dict"]["module.encoder_q.layer2.0.bn1.running_mean"]
    path = tmp_path / "broken.pth.tar"
    torch.save(checkpoint, path)
    with pytest.raises(UserError) as err:
        load_encoder(path, ModelConfig(arch="resnet18", width=64, stem="cifar"), DataConfig())
    assert "1 missing: backbone.layer2.0.bn1.running_mean" in str(err.value)
    assert "unexpected" not in str(err.value)


def test_checkpoint_for_another_architecture_is_refused(tmp_path, moco_encoder):
    path = tmp_path / "moco.pth.tar"
    torch.save(moco_v2_checkpoint(moco_encoder), path)
    # The head is read off the checkpoint (2048-2048-128), whatever the config says of it ...
    loaded = load_encoder(path, ModelConfig(arch="resnet18", stem="cifar", head_hidden=32, embed_dim=64), DataConfig())
    assert (loaded.head[0].out_features, loaded.embed_dim) == (2048, 128)
    # ... but the backbone must be the configured one.
    with pytest.raises(UserError, match=r"\(moco layout\) does not fit the configured architecture \(resnet18 of "
                                        r"width 32\).*of another shape: backbone\.bn1\."):
        load_encoder(path, ModelConfig(arch="resnet18", width=32, stem="cifar"), DataConfig())
    with pytest.raises(UserError, match=r"keys \d+ missing: backbone\.layer1\.2\."):
        load_encoder(path, ModelConfig(arch="resnet34", width=64, stem="cifar"), DataConfig())


class Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "teacher.pth.tar"
    torch.save({"state_dict": {"module.encoder_q.conv1.weight": torch.zeros(1)}, "payload": Exploit(str(marker))},
               path)
    with pytest.raises(UserError, match="needs arbitrary code to unpickle and was refused"):
        load_encoder(path, tiny_model_config(), tiny_config().data)
    assert not marker.exists()


def test_other_bad_files(tmp_path):
    data = tiny_config().data
    with pytest.raises(UserError, match="does not exist"):
        load_encoder(tmp_path / "nope.safetensors", tiny_model_config(), data)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="garbage.pth"):  # not a pickle torch accepts: refused, not crashed
        load_encoder(garbage, tiny_model_config(), data)
    plain = tmp_path / "plain.pth"
    torch.save(tiny_encoder().state_dict(), plain)  # a plain state dict: not a layout bingo knows
    with pytest.raises(UserError, match="plain.pth is in no checkpoint layout bingo knows"):
        load_encoder(plain, tiny_model_config(), data)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="foreign.safetensors is in no checkpoint layout bingo knows"):
        load_encoder(foreign, tiny_model_config(), data)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UserError, match="broken.safetensors"):
        load_encoder(broken, tiny_model_config(), data)


def test_head_bn_option_round_trips_through_an_encoder_file(tmp_path):
    from bingo.config import DataConfig, ModelConfig
    from bingo.models.checkpoints import load_encoder, save_encoder
    from bingo.models.encoder import Encoder

    model = ModelConfig(arch="resnet18", width=8, stem="cifar", head_hidden=32, embed_dim=16, head_bn=True)
    data = DataConfig(image_size=16, channels=3)
    encoder = Encoder(model, 3)
    assert isinstance(encoder.head[1], torch.nn.BatchNorm1d)
    save_encoder(encoder, model, data, tmp_path / "e.safetensors")
    loaded = load_encoder(tmp_path / "e.safetensors", ModelConfig(), data)
    assert isinstance(loaded.head[1], torch.nn.BatchNorm1d)


@pytest.mark.parametrize("name, content", [
    ("text.pth", b"hello, I am a text file\n"),
    ("empty.pth", b""),
    ("empty.pth.tar", b""),
    ("notes.ckpt", b'{"a json": "file"}'),
    ("half.pth", None),  # the first half of a real checkpoint
    ("other.pth", "zip"),  # another program's zip archive
])
def test_files_that_are_no_checkpoint_are_refused_in_one_line(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        torch.save(tiny_encoder().state_dict(), tmp_path / "whole.pth")
        whole = (tmp_path / "whole.pth").read_bytes()
        content = whole[: len(whole) // 2]
    elif content == "zip":
        import zipfile

        with zipfile.ZipFile(tmp_path / "archive.zip", "w") as archive:
            archive.writestr("readme.txt", "not a checkpoint")
        content = (tmp_path / "archive.zip").read_bytes()
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"{name}.*not a PyTorch checkpoint") as refusal:
        load_encoder(path, tiny_model_config(), tiny_config().data)
    assert "\n" not in str(refusal.value)
