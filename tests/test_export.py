"""`bingo export`: each format loads into its stock model and gives bingo's features, the ONNX model matches
PyTorch under onnxruntime, the detectron2 pickle has detectron2's names and the source tensors, the card
holds measured values and the eval folders' accuracies, and bad requests are refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import runpy
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import timm
import torch
import torchvision
import yaml
from safetensors.torch import load_file
from torch import nn

from bingo.config import DataConfig, ModelConfig
from bingo.errors import UserError
from bingo.models.backbones import count_parameters
from bingo.models.checkpoints import encoder_info, load_encoder, save_encoder
from bingo.models.encoder import Encoder
from bingo.models.export import export

SIZE = 32
DATA = DataConfig(name="generated", image_size=SIZE, channels=3, mean=[0.5] * 3, std=[0.25] * 3, eval_resize=36)


def save_model(path: Path, arch: str = "resnet18", stem: str = "imagenet", channels: int = 3, **widths: int) -> Path:
    """A bingo encoder file with random weights and non-trivial BatchNorm statistics."""
    cfg = ModelConfig(arch=arch, stem=stem, head_hidden=32, embed_dim=16, **widths)
    data = dataclasses.replace(DATA, channels=channels, mean=[0.5] * channels, std=[0.25] * channels)
    torch.manual_seed(0)
    encoder = Encoder(cfg, channels)
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    save_encoder(encoder, cfg, data, path)
    return path


def backbone_of(path: Path) -> nn.Module:
    model, data = encoder_info(path)
    return load_encoder(path, model, DataConfig(channels=data["channels"], image_size=SIZE)).backbone.eval()


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def eval_folder(path: Path, params: int, knn: float, linear: float | None = None) -> Path:
    """A `bingo eval` run folder: results.json with one row, config.yaml naming the data set."""
    row = {"knn": {"10": {"top1": knn, "top5": 90.0}}, "params": params, "bag_purity": 0.5}
    if linear is not None:
        row |= {"linear": {"top1": linear, "top5": 95.0, "variant": "fast"},
                "semi": {"1%": {"top1": 20.0, "top5": 50.0}}, "transfer": {"cifar10": {"top1": 30.0, "top5": 70.0}}}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"rows": {"model": row}, "protocols": ["knn"]}))
    (path / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "generated", "eval_resize": 36}}))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"r18": save_model(root / "r18.safetensors"), "r50": save_model(root / "r50.safetensors", "resnet50"),
            "effnet": save_model(root / "effnet.safetensors", "efficientnet_b0", stem="cifar"),
            "r18-cifar": save_model(root / "r18-cifar.safetensors", stem="cifar"),
            "r18-w8": save_model(root / "w8.safetensors", width=8),
            "r18-w8-stem64": save_model(root / "w8-stem64.safetensors", width=8, stem_width=64),
            "r18-gray": save_model(root / "gray.safetensors", stem="small", channels=1)}


@pytest.fixture(scope="module")
def full(models, tmp_path_factory) -> tuple[Path, dict]:
    """A ResNet-18 student in every format, beside a ResNet-50 teacher, with eval folders for both."""
    root = tmp_path_factory.mktemp("full")
    student_params = count_parameters(backbone_of(models["r18"]))
    teacher_params = count_parameters(backbone_of(models["r50"]))
    student_evals = [eval_folder(root / "eval-knn", student_params, 61.5),
                     eval_folder(root / "eval-all", student_params, 61.5, linear=66.25)]
    student_evals[1].joinpath("results.json").write_text(
        student_evals[1].joinpath("results.json").read_text().replace('"10"', '"20"'))  # kNN@20 here
    card = export(models["r18"], root / "out", ["torchvision", "timm", "detectron2", "onnx"], student_evals,
                  teacher=models["r50"], teacher_evals=[eval_folder(root / "eval-teacher", teacher_params, 72.0)],
                  latency_repeats=3)
    return root / "out", card


def test_state_dicts_load_strictly_into_stock_models(models, full):
    out, _ = full
    x = torch.randn(3, 3, SIZE, SIZE)
    expected = features(backbone_of(models["r18"]), x)
    vision = torchvision.models.get_model("resnet18", weights=None)
    vision.fc = nn.Identity()
    vision.load_state_dict(torch.load(out / "torchvision.pth", weights_only=True), strict=True)
    timm_model = timm.create_model("resnet18", num_classes=0, in_chans=3)
    timm_model.load_state_dict(load_file(out / "timm.safetensors"), strict=True)
    for model in (vision, timm_model):
        torch.testing.assert_close(features(model, x), expected, rtol=0, atol=1e-6)
    for fmt in ("torchvision", "timm"):  # .pth and .safetensors hold the same tensors
        pth, st = torch.load(out / f"{fmt}.pth", weights_only=True), load_file(out / f"{fmt}.safetensors")
        assert pth.keys() == st.keys() and all(torch.equal(pth[k], st[k]) for k in pth)
    loaders = runpy.run_path(str(out / "load.py"))  # the code the card shows
    for name in ("torchvision_backbone", "timm_backbone"):
        torch.testing.assert_close(features(loaders[name](), x), expected, rtol=0, atol=1e-6)


def test_onnx_matches_pytorch_under_onnxruntime(models, full):
    out, card = full
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, SIZE, SIZE] and session.get_inputs()[0].name == "images"
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE)
        expected = features(backbone_of(models["r18"]), x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert card["checks"]["onnx"]["passed"] and card["checks"]["onnx"]["batches"] == [1, 3]


def detectron2_resnet_keys(depth: int) -> set[str]:
    """The parameter and buffer names of detectron2's ResNet backbone (build_resnet_backbone, FrozenBN)."""
    blocks, bottleneck = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth], depth >= 50
    norm = ("weight", "bias", "running_mean", "running_var")
    keys = {"stem.conv1.weight"} | {f"stem.conv1.norm.{n}" for n in norm}
    for stage, count in enumerate(blocks, start=2):
        for block in range(count):
            convs = ["conv1", "conv2", "conv3"][:3 if bottleneck else 2]
            convs += ["shortcut"] if block == 0 and (bottleneck or stage > 2) else []
            for conv in convs:
                keys |= {f"res{stage}.{block}.{conv}.weight"} | {f"res{stage}.{block}.{conv}.norm.{n}" for n in norm}
    return keys


def torchvision_key(key: str) -> str:
    """detectron2 name -> torchvision name: the inverse of the export's renaming."""
    key = key.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    key = re.sub(r"conv(\d)\.norm", r"bn\1", key)
    key = re.sub(r"res(\d)", lambda match: f"layer{int(match[1]) - 1}", key)
    return key.removeprefix("stem.")


@pytest.mark.parametrize("name,depth", [("r18", 18), ("r50", 50)])
def test_detectron2_pickle_inverts_to_the_source(models, full, tmp_path, name, depth):
    out = full[0] if name == "r18" else tmp_path / "d2"
    if name == "r50":
        export(models["r50"], out, ["detectron2"], latency_repeats=1)
    with open(out / "detectron2.pkl", "rb") as file:
        checkpoint = pickle.load(file)
    assert checkpoint["matching_heuristics"] is True and "__author__" in checkpoint
    assert set(checkpoint["model"]) == detectron2_resnet_keys(depth)
    source = {k: v for k, v in backbone_of(models[name]).state_dict().items() if not k.endswith("num_batches_tracked")}
    inverted = {torchvision_key(k): v for k, v in checkpoint["model"].items()}
    assert inverted.keys() == source.keys()
    for key, value in inverted.items():
        assert isinstance(value, np.ndarray) and np.array_equal(value, source[key].numpy()), key


def test_card_holds_measured_values_and_accuracies(models, full):
    out, card = full
    assert json.loads((out / "card.json").read_text()) == card
    assert card["student"]["params"] == count_parameters(backbone_of(models["r18"]))
    assert card["teacher"]["params"] == count_parameters(backbone_of(models["r50"]))
    for model in (card["student"], card["teacher"]):
        assert model["flops"] > 0 and model["latency_ms"]["torch"]["median"] > 0
        assert model["latency_ms"]["torch"]["repeats"] == 3
    assert card["teacher"]["flops"] > card["student"]["flops"]
    assert card["student"]["latency_ms"]["onnxruntime"]["median"] > 0
    assert "onnxruntime" not in card["teacher"]["latency_ms"]  # the teacher is measured, not exported
    assert card["student"]["accuracy"] == {
        "generated kNN@10 top-1": 61.5, "generated kNN@10 top-5": 90.0, "generated kNN@20 top-1": 61.5,
        "generated kNN@20 top-5": 90.0, "generated linear top-1": 66.25, "generated linear top-5": 95.0,
        "generated semi 1% top-1": 20.0, "generated semi 1% top-5": 50.0,
        "generated transfer cifar10 top-1": 30.0, "generated transfer cifar10 top-5": 70.0}
    assert card["teacher"]["accuracy"]["generated kNN@10 top-1"] == 72.0
    assert card["input"] | {"mean": None} == {"channels": 3, "colour": "RGB", "image_size": SIZE, "mean": None,
                                             "std": [0.25] * 3, "eval_resize": 36, "feature_dim": 512,
                                             "trained_on": "generated"}
    text = (out / "card.md").read_text()
    assert "| generated linear top-1 (%) | 66.2 | - |" in text
    assert "| generated kNN@10 top-1 (%) | 61.5 | 72.0 |" in text
    assert card["machine"]["cpu"] in text and f"{card['machine']['threads']} thread(s)" in text
    assert "detectron2 itself was not run" in text and "def timm_backbone" in text


def test_small_stems_and_timm_models_export_through_timm_with_the_stem_change(models, tmp_path):
    card = export(models["effnet"], tmp_path / "effnet", latency_repeats=1)  # every format it fits
    assert card["formats"] == ["timm", "onnx"] and card["checks"]["onnx"]["passed"]
    x = torch.randn(2, 3, SIZE, SIZE)
    stock = timm.create_model("efficientnet_b0", num_classes=0, in_chans=3)
    stock.load_state_dict(torch.load(tmp_path / "effnet" / "timm.pth", weights_only=True), strict=True)
    changed = runpy.run_path(str(tmp_path / "effnet" / "load.py"))["timm_backbone"]()
    expected = features(backbone_of(models["effnet"]), x)
    torch.testing.assert_close(features(changed, x), expected, rtol=0, atol=1e-7)
    assert not torch.allclose(features(stock, x), expected)  # the stock stem (stride 2) gives other features

    export(models["r18-gray"], tmp_path / "gray", ["timm"], latency_repeats=1)
    code = (tmp_path / "gray" / "load.py").read_text()
    assert "in_chans=1)" in code and "model.conv1 = nn.Conv2d(1, 64, 3, 2, 1, bias=False)" in code
    gray = torch.randn(2, 1, SIZE, SIZE)
    loaded = runpy.run_path(str(tmp_path / "gray" / "load.py"))["timm_backbone"]()
    torch.testing.assert_close(features(loaded, gray), features(backbone_of(models["r18-gray"]), gray),
                               rtol=0, atol=1e-6)


def test_a_widened_resnet_with_the_stock_stem_exports_to_timm(models, tmp_path):
    export(models["r18-w8-stem64"], tmp_path / "w8", ["timm"], latency_repeats=1)
    code = (tmp_path / "w8" / "load.py").read_text()
    assert 'create_model("resnet18", pretrained=False, num_classes=0, in_chans=3, channels=(8, 16, 32, 64))' in code
    x = torch.randn(2, 3, SIZE, SIZE)
    loaded = runpy.run_path(str(tmp_path / "w8" / "load.py"))["timm_backbone"]()
    expected = features(backbone_of(models["r18-w8-stem64"]), x)
    torch.testing.assert_close(features(loaded, x), expected, rtol=0, atol=1e-6)


def test_overwrite_replaces_the_export_and_drops_stale_files(models, tmp_path):
    out = tmp_path / "out"
    export(models["r18-cifar"], out, ["timm", "onnx"], latency_repeats=1)
    with pytest.raises(UserError, match="is not empty"):
        export(models["r18-cifar"], out, ["timm"], latency_repeats=1)
    export(models["r18-cifar"], out, ["timm"], latency_repeats=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "load.py", "timm.pth", "timm.safetensors"]


@pytest.mark.parametrize("model,formats,evals,message", [
    ("r18", ["tensorrt"], None, "unknown export format tensorrt; choose from torchvision, timm, detectron2, onnx"),
    ("effnet", ["detectron2"], None, "cannot be exported as detectron2: efficientnet_b0 is not a torchvision ResNet"),
    ("r18-cifar", ["torchvision"], None, "cannot be exported as torchvision: its 'cifar' stem for small images"),
    ("r18-w8", ["detectron2"], None, "cannot be exported as detectron2: its layers are not as wide as the stock "
                                     "resnet18's (width 8); export it as timm or onnx"),
    ("r18-gray", ["torchvision"], None, "cannot be exported as torchvision: its 'small' stem"),
    ("r18-w8", ["timm"], None, "cannot be exported as timm: its stem has 8 channels and timm's ResNet stem has 64; "
                               "export it as onnx"),
    ("r18", ["timm"], "empty", "has no results.json"),
    ("r18", ["timm"], "other-model", "evaluated a model with 1,000 backbone parameters"),
])
def test_bad_requests_fail_in_one_line_and_write_nothing(models, tmp_path, model, formats, evals, message):
    if evals == "empty":
        (tmp_path / "eval").mkdir()
    elif evals == "other-model":
        eval_folder(tmp_path / "eval", 1000, 50.0)
    with pytest.raises(UserError) as err:
        export(models[model], tmp_path / "out", formats, [tmp_path / "eval"] if evals else [], latency_repeats=1)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_export_from_the_command_line(chain, tmp_path):
    from conftest import check_ok, run_cli

    out = tmp_path / "export"
    proc = run_cli("export", "--model", chain.bingo / "student.safetensors", "--out", out, "--formats", "timm", "onnx",
                   "--evals", chain.eval, "--teacher", chain.teacher, "--latency-repeats", "3")
    check_ok(proc)
    assert {p.name for p in out.iterdir()} >= {"timm.pth", "timm.safetensors", "model.onnx", "load.py", "card.md",
                                               "card.json"}
    card = json.loads((out / "card.json").read_text())
    assert card["student"]["accuracy"] and card["teacher"]["params"] > 0  # tiny teacher and student alike
    assert "# Deployment card" in proc.stdout
    refused = run_cli("export", "--model", chain.bingo / "student.safetensors", "--out", out, "--formats", "onnx")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1  # an export is never replaced
    assert "--overwrite" in refused.stderr


def test_export_of_an_unknown_format_is_one_line(chain, tmp_path):
    from conftest import run_cli

    proc = run_cli("export", "--model", chain.bingo / "student.safetensors", "--out", tmp_path / "x", "--formats",
                   "tflite")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "tflite" in proc.stderr
    assert not (tmp_path / "x").exists()
