"""`bingo export`: a bingo encoder's backbone for torchvision, timm, detectron2 and ONNX, with a deployment card.

Every file is staged in a temporary folder and checked there before anything reaches `out`: the
generated `load.py` loads each state dict strictly into the stock model and must reproduce bingo's
features, and onnxruntime must reproduce them from the ONNX file. Only then are the files copied
into `out`, each atomically, card.json last.
"""

from __future__ import annotations

import functools
import json
import pickle
import re
import runpy
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
import yaml
from safetensors.torch import save_file
from torch import nn
from torch.export import Dim

from bingo.card import machine, measure, read_accuracies, render_card, run_config
from bingo.config import DataConfig, ModelConfig
from bingo.errors import UserError
from bingo.models.backbones import count_parameters
from bingo.models.checkpoints import atomic_write, encoder_info, load_encoder

EXPORT_FORMATS = ("torchvision", "timm", "detectron2", "onnx")
FILES = {"torchvision": ("torchvision.pth", "torchvision.safetensors"), "timm": ("timm.pth", "timm.safetensors"),
         "detectron2": ("detectron2.pkl",), "onnx": ("model.onnx",)}
CARD_FILES = ("load.py", "card.md", "card.json")
CARD_FORMAT = "bingo-export/1"
CHECK_BATCHES = (1, 3)
RELATIVE_TOLERANCE = 1e-4  # of the largest feature magnitude


@dataclass
class Source:
    """A bingo encoder file: its architecture, input format and loaded backbone (eval mode)."""

    path: Path
    model: ModelConfig
    data: dict  # name, channels, image_size, mean, std
    backbone: nn.Module
    feature_dim: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The input shape at batch 1."""
        return 1, self.data["channels"], self.data["image_size"], self.data["image_size"]


def read_source(path: Path) -> Source:
    """Load a bingo encoder file (student.safetensors, teacher.safetensors); other files are refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    info = encoder_info(path)
    if info is None:
        raise UserError(f"{path} is not a bingo encoder file (student.safetensors or teacher.safetensors)")
    model, data = info
    encoder = load_encoder(path, model, DataConfig(channels=data["channels"], image_size=data["image_size"]))
    return Source(path, model, data, encoder.backbone.eval(), encoder.feature_dim)


def refusal(src: Source, fmt: str) -> str | None:
    """Why `src` cannot be exported as `fmt` (one line), or None when it can."""
    reasons = {"torchvision": _not_stock_torchvision, "detectron2": _not_stock_torchvision, "timm": _not_timm}
    reason = reasons[fmt](src) if fmt in reasons else None
    if reason is None:
        return None
    return f"{src.path} cannot be exported as {fmt}: {reason}; export it as " + (
        "onnx" if fmt == "timm" else "timm or onnx")


def supported_formats(src: Source) -> list[str]:
    """The export formats `src` fits."""
    return [fmt for fmt in EXPORT_FORMATS if refusal(src, fmt) is None]


def _not_stock_torchvision(src: Source) -> str | None:
    """Why `src`'s backbone differs from the stock torchvision ResNet (the one detectron2 also has), or None."""
    model = src.model
    if not isinstance(src.backbone, torchvision.models.ResNet):
        return f"{model.arch} is not a torchvision ResNet (bingo builds it with timm)"
    if model.stem != "imagenet":
        return f"its '{model.stem}' stem for small images is not the stock 7x7/2 conv + max-pool"
    if src.data["channels"] != 3:
        return f"it reads {src.data['channels']}-channel images, the stock model 3"
    shapes = {k: tuple(v.shape) for k, v in src.backbone.state_dict().items()}
    if model.arch not in torchvision.models.list_models(torchvision.models) or shapes != _stock_shapes(model.arch):
        return f"its layers are not as wide as the stock {_resnet_name(src.backbone)}'s (width {model.width})"
    return None


def _not_timm(src: Source) -> str | None:
    """Why timm cannot build `src`'s backbone, or None: timm's plain ResNet stem always has 64 channels."""
    backbone = src.backbone
    if isinstance(backbone, torchvision.models.ResNet) and backbone.conv1.out_channels != 64:
        return f"its stem has {backbone.conv1.out_channels} channels and timm's ResNet stem has 64"
    return None


@functools.cache
def _stock_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the stock torchvision `arch` without classifier."""
    model = torchvision.models.get_model(arch, weights=None)
    model.fc = nn.Identity()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _resnet_name(backbone: torchvision.models.ResNet) -> str:
    """The depth name of a torchvision ResNet ('resnet50'), whatever its width: 2 or 3 layers per block, +2."""
    layers_per_block = 3 if isinstance(backbone.layer1[0], torchvision.models.resnet.Bottleneck) else 2
    blocks = sum(len(getattr(backbone, f"layer{i}")) for i in range(1, 5))
    return f"resnet{layers_per_block * blocks + 2}"


def export(model_path: Path, out: Path, formats: Sequence[str] | None = None, student_evals: Sequence[Path] = (),
           teacher: Path | None = None, teacher_evals: Sequence[Path] = (), latency_repeats: int = 50,
           overwrite: bool = False) -> dict:
    """Export a bingo encoder's backbone to `formats` (None: all it fits) with load.py and card.md/card.json in `out`.

    Returns the card (also written as card.json). Every check on the inputs runs before anything is written.
    """
    out = Path(out)
    _check_request(out, formats, teacher, teacher_evals, latency_repeats, overwrite)
    student = read_source(model_path)
    formats = _resolve_formats(student, formats)
    mentor = read_source(teacher) if teacher is not None else None
    student_accuracy = read_accuracies(student_evals, count_parameters(student.backbone))
    teacher_accuracy = read_accuracies(teacher_evals, count_parameters(mentor.backbone) if mentor else None)
    with tempfile.TemporaryDirectory(prefix="bingo-export-") as tmp:
        stage = Path(tmp)
        card = _stage(student, formats, stage, student_evals)
        onnx_path = stage / "model.onnx" if "onnx" in formats else None
        card["student"] = _entry(student, latency_repeats, onnx_path, student_evals, student_accuracy)
        card["teacher"] = mentor and _entry(mentor, latency_repeats, None, teacher_evals, teacher_accuracy)
        (stage / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        detectron2 = detectron2_yaml(student) if "detectron2" in formats else None
        (stage / "card.md").write_text(render_card(card, (stage / "load.py").read_text(), detectron2))
        _publish(stage, out, overwrite)
    return card


def _check_request(out: Path, formats: Sequence[str] | None, teacher: Path | None, teacher_evals: Sequence[Path],
                   latency_repeats: int, overwrite: bool) -> None:
    unknown = [fmt for fmt in formats or () if fmt not in EXPORT_FORMATS]
    if unknown:
        raise UserError(f"unknown export format {', '.join(unknown)}; choose from {', '.join(EXPORT_FORMATS)}")
    if teacher_evals and teacher is None:
        raise UserError("teacher eval folders need the teacher's encoder file too (teacher.safetensors)")
    if latency_repeats < 1:
        raise UserError(f"latency repeats must be at least 1, not {latency_repeats}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; pass a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; choose another folder, or pass --overwrite to replace its export")


def _resolve_formats(src: Source, formats: Sequence[str] | None) -> list[str]:
    if formats is None:
        return supported_formats(src)
    for fmt in formats:
        if refusal(src, fmt) is not None:
            raise UserError(refusal(src, fmt))
    return list(dict.fromkeys(formats))


def _stage(src: Source, formats: list[str], stage: Path, evals: Sequence[Path]) -> dict:
    """Write the formats and load.py into `stage`, check them, and start the card with what was checked."""
    state = {k: v.detach().clone().contiguous() for k, v in src.backbone.state_dict().items()}
    for fmt in formats:
        WRITERS[fmt](src, state, stage)
    (stage / "load.py").write_text(load_py(src, formats))
    return {"format": CARD_FORMAT, "formats": formats, "files": {fmt: list(FILES[fmt]) for fmt in formats},
            "targets": {fmt: _target(src, fmt) for fmt in formats}, "checks": _verify(src, formats, stage),
            "input": _input_spec(src, evals), "machine": machine()}


def _entry(src: Source, repeats: int, onnx_path: Path | None, evals: Sequence[Path], accuracy: dict) -> dict:
    """One model's column of the card: what it is, its measured size, cost and latency, its accuracies."""
    model = src.model
    width = f"width {model.width}, " if model.arch.startswith("resnet") else ""
    return {"file": str(src.path), "arch": model.arch, "model": f"{model.arch} ({width}{model.stem} stem)",
            "input_shape": list(src.shape), "feature_dim": src.feature_dim,
            **measure(src.backbone, src.shape, repeats, onnx_path),
            "accuracy": accuracy, "evals": [str(folder) for folder in evals]}


def _input_spec(src: Source, evals: Sequence[Path]) -> dict:
    """The input format; eval_resize comes from the config.yaml of the model's run folder or of an eval folder."""
    configs = [run_config(folder).get("data", {}) for folder in [src.path.parent, *evals]]
    eval_resize = next((data["eval_resize"] for data in configs if "eval_resize" in data), None)
    colour = {1: "grayscale", 3: "RGB"}.get(src.data["channels"], "multi-channel")
    return {"channels": src.data["channels"], "colour": colour, "image_size": src.data["image_size"],
            "mean": src.data["mean"], "std": src.data["std"], "eval_resize": eval_resize,
            "feature_dim": src.feature_dim, "trained_on": src.data["name"]}


def _publish(stage: Path, out: Path, overwrite: bool) -> None:
    """Copy the staged files into `out` atomically, card.json last; drop stale export files when overwriting."""
    out.mkdir(parents=True, exist_ok=True)
    staged = sorted(stage.iterdir(), key=lambda path: path.name == "card.json")
    known = {name for names in FILES.values() for name in names} | set(CARD_FILES)
    if overwrite:
        for name in known - {path.name for path in staged}:
            (out / name).unlink(missing_ok=True)
    for path in staged:
        atomic_write(out / path.name, lambda tmp: shutil.copy(path, tmp))  # contents and permissions


# ---- the formats ----

def _write_state_dict(src: Source, state: dict[str, torch.Tensor], stage: Path, fmt: str) -> None:
    torch.save(state, stage / f"{fmt}.pth")
    save_file(state, str(stage / f"{fmt}.safetensors"), metadata={"arch": src.model.arch, "format": fmt})


def detectron2_key(key: str) -> str:
    """A torchvision ResNet key under detectron2's name (as MoCo converts): layer1.0.bn2.x -> res2.0.conv2.norm.x."""
    if not key.startswith("layer"):
        key = "stem." + key
    key = re.sub(r"layer(\d)", lambda match: f"res{int(match[1]) + 1}", key)
    key = re.sub(r"bn(\d)", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def detectron2_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    """The pickle detectron2 loads: numpy weights under detectron2's names; BatchNorm's step counters dropped."""
    model = {detectron2_key(k): v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return {"model": model, "__author__": "bingo", "matching_heuristics": True}


def _write_detectron2(src: Source, state: dict[str, torch.Tensor], stage: Path) -> None:
    with open(stage / "detectron2.pkl", "wb") as file:
        pickle.dump(detectron2_checkpoint(state), file)


def _write_onnx(src: Source, state: dict[str, torch.Tensor], stage: Path) -> None:
    torch.onnx.export(src.backbone, (torch.zeros(src.shape),), str(stage / "model.onnx"), dynamo=True,
                      external_data=False, verbose=False, input_names=["images"], output_names=["features"],
                      dynamic_shapes=({0: Dim("batch")},))


WRITERS: dict[str, Callable[[Source, dict, Path], None]] = {
    "torchvision": lambda src, state, stage: _write_state_dict(src, state, stage, "torchvision"),
    "timm": lambda src, state, stage: _write_state_dict(src, state, stage, "timm"),
    "detectron2": _write_detectron2, "onnx": _write_onnx}


def detectron2_yaml(src: Source) -> str:
    """The detectron2 config keys the exported ResNet needs (its depth, pixel statistics in 0-255, RGB input)."""
    depth = int(src.model.arch.removeprefix("resnet"))
    resnets = {"DEPTH": depth} | ({"RES2_OUT_CHANNELS": 64} if depth < 50 else {"STRIDE_IN_1X1": False})
    model = {"WEIGHTS": "detectron2.pkl", "PIXEL_MEAN": [round(255 * m, 3) for m in src.data["mean"]],
             "PIXEL_STD": [round(255 * s, 3) for s in src.data["std"]], "RESNETS": resnets}
    return yaml.safe_dump({"MODEL": model, "INPUT": {"FORMAT": "RGB"}}, sort_keys=False)


def _target(src: Source, fmt: str) -> str:
    """What a format's files are for, in one sentence."""
    arch, (_, channels, size, _) = src.model.arch, src.shape
    stem = f", after bingo's '{src.model.stem}' stem change" if src.model.stem != "imagenet" else ""
    return {
        "torchvision": f"state dict for `torchvision.models.get_model(\"{arch}\")` with `fc = nn.Identity()` "
                       "(strict load; `torchvision_backbone()` in load.py)",
        "timm": f"state dict for `{_timm_call(src)}`{stem} (strict load; `timm_backbone()` in load.py)",
        "detectron2": f"detectron2 ResNet-{arch.removeprefix('resnet')} backbone weights in the format of MoCo's "
                      "conversion script (pickle of numpy arrays, matching_heuristics); names follow detectron2's "
                      "ResNet naming, checked by bingo's tests; detectron2 itself was not run",
        "onnx": f"ONNX graph, input `images` (batch, {channels}, {size}, {size}) float32, output `features` "
                f"(batch, {src.feature_dim}); run by onnxruntime (`onnx_session()` in load.py)"}[fmt]


# ---- load.py: the loading code, written next to the files and run by the checks ----

def load_py(src: Source, formats: Sequence[str]) -> str:
    """The source of load.py: one loader function per exported format that Python can load."""
    loaders = {"torchvision": _torchvision_loader, "timm": _timm_loader, "onnx": _onnx_loader}
    return "\n\n\n".join([_load_header(src, formats)] + [loaders[f](src) for f in formats if f in loaders]) + "\n"


def _load_header(src: Source, formats: Sequence[str]) -> str:
    _, channels, size, _ = src.shape
    torch_imports = "import torch\nfrom torch import nn\n\n" if {"torchvision", "timm"} & set(formats) else ""
    return (f'"""Load the backbone that `bingo export` exported from {src.path.name} ({src.model.arch}).\n\n'
            f"Each loader gives a model mapping normalised images (batch, {channels}, {size}, {size}) float32 to "
            f"features (batch, {src.feature_dim});\nsee card.md for the input format.\n"
            '"""\n\nfrom pathlib import Path\n\n' + torch_imports + "HERE = Path(__file__).resolve().parent")


def _torchvision_loader(src: Source) -> str:
    return f'''def torchvision_backbone(folder: Path = HERE) -> nn.Module:
    """Stock torchvision {src.model.arch}, classifier replaced by nn.Identity(), holding the exported weights."""
    import torchvision

    model = torchvision.models.get_model("{src.model.arch}", weights=None)
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(folder / "torchvision.pth", weights_only=True))
    return model.eval()'''


def _timm_loader(src: Source) -> str:
    stem = "".join(f"    {line}\n" for line in _stem_change(src))
    return f'''def timm_backbone(folder: Path = HERE) -> nn.Module:
    """The timm model without classifier, holding the exported weights."""
    import timm

    model = {_timm_call(src)}
{stem}    model.load_state_dict(torch.load(folder / "timm.pth", weights_only=True))
    return model.eval()'''


def _timm_call(src: Source) -> str:
    """The timm constructor call of `src`'s architecture, without classifier; widths read off a torchvision ResNet."""
    backbone, arch, kwargs = src.backbone, src.model.arch, f", in_chans={src.data['channels']}"
    if isinstance(backbone, torchvision.models.ResNet):
        arch = _resnet_name(backbone)
        channels = tuple(getattr(backbone, f"layer{i}")[0].conv1.out_channels for i in range(1, 5))
        kwargs += f", channels={channels}" if channels != (64, 128, 256, 512) else ""
    return f'timm.create_model("{arch}", pretrained=False, num_classes=0{kwargs})'


def _stem_change(src: Source) -> list[str]:
    """The lines that give a stock model bingo's small-image stem, read off `src`'s backbone."""
    if src.model.stem == "imagenet":
        return []
    note = f"  # bingo's '{src.model.stem}' stem for small images"
    backbone = src.backbone
    if hasattr(backbone, "conv1") and hasattr(backbone, "maxpool"):  # ResNets
        conv = backbone.conv1
        return [f"model.conv1 = nn.Conv2d({conv.in_channels}, {conv.out_channels}, {conv.kernel_size[0]}, "
                f"{conv.stride[0]}, {conv.padding[0]}, bias=False){note}", "model.maxpool = nn.Identity()"]
    name, conv = next((n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d))
    return [f'model.get_submodule("{name}").stride = {tuple(conv.stride)}{note}']


def _onnx_loader(src: Source) -> str:
    return '''def onnx_session(folder: Path = HERE) -> "onnxruntime.InferenceSession":
    """An onnxruntime CPU session of model.onnx: input "images", output "features"."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])'''


# ---- checks ----

def _verify(src: Source, formats: Sequence[str], stage: Path) -> dict[str, dict]:
    """Run each staged format through load.py on random images; it must reproduce bingo's features."""
    loaders = runpy.run_path(str(stage / "load.py"))
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn((n, *src.shape[1:]), generator=generator) for n in CHECK_BATCHES]
    checks = {}
    with torch.inference_mode():
        expected = [src.backbone(x) for x in images]
        for fmt in (f for f in formats if f != "detectron2"):
            run = _runner(fmt, loaders, stage)
            checks[fmt] = _agreement(fmt, expected, [run(x) for x in images])
    return checks


def _runner(fmt: str, loaders: dict, stage: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The staged `fmt` model as a function of an image batch."""
    if fmt == "onnx":
        session = loaders["onnx_session"](stage)
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    try:
        return loaders[f"{fmt}_backbone"](stage)
    except RuntimeError as err:
        raise UserError(f"the {fmt} export does not load into the stock model here: "
                        f"{str(err).strip().splitlines()[0]}; nothing was written") from None


def _agreement(fmt: str, expected: list[torch.Tensor], got: list[torch.Tensor]) -> dict:
    """Max abs difference of two runs; refused when above RELATIVE_TOLERANCE of the features' scale."""
    pairs = list(zip(expected, got, strict=True))
    same_shapes = all(a.shape == b.shape for a, b in pairs)
    diff = max((a - b).abs().max().item() for a, b in pairs) if same_shapes else float("inf")
    scale = max(a.abs().max().item() for a in expected)
    tolerance = RELATIVE_TOLERANCE * scale
    if not diff <= tolerance:
        raise UserError(f"the {fmt} export does not reproduce bingo's features (max abs diff {diff:.2e} > "
                        f"{tolerance:.2e}); nothing was written; leave {fmt} out")
    return {"batches": list(CHECK_BATCHES), "max_abs_diff": diff, "scale": scale, "tolerance": tolerance,
            "passed": True}
