"""Checkpoint layouts of the public checkpoints bingo loads as teachers or students: the releases of MoCo v1/v2
and v3, SwAV, DINO, BYOL and SimCLR (converted to PyTorch), and plain torchvision and timm state dicts.

One table, LAYOUTS, drives detection and conversion. Each layout says where its state dict sits in
the file, which keys identify it, and how its keys map to an Encoder's `backbone.*` and `head.<i>.*`
keys (each rule list ends with a catch-all for the rest). bingo's own encoder files
(layout `bingo`) carry their architecture in their metadata and are read by checkpoints.py.
Before the rules apply, a prefix that every key shares (`module.` from DistributedDataParallel,
`model.`, `backbone.`, `encoder.`) is stripped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bingo.errors import UserError

WRAPPERS = ("module.", "model.", "backbone.", "encoder.")
CLASSIFIERS = (("fc.", None), ("classifier.", None), ("head.fc.", None), ("head.weight", None), ("head.bias", None))
PLAIN = (*CLASSIFIERS, ("", "backbone."))  # a bare model: everything but its classifier is the backbone


@dataclass(frozen=True)
class Layout:
    """Where a project's checkpoint keeps its state dict, the keys that identify it, and how they map to bingo's."""

    name: str
    files: str  # what users have in this layout
    containers: tuple[str, ...]  # entries of the file that may hold the state dict, in order; "": the file itself
    markers: tuple[str, ...]  # key prefixes that identify the layout (any one suffices)
    rules: tuple[tuple[str, str | None], ...]  # (source prefix, Encoder prefix or None: dropped); first match wins


LAYOUTS = (
    Layout("moco",
           "MoCo v1/v2 (facebookresearch/moco): moco_v2_800ep_pretrain.pth.tar, moco_v1_200ep_pretrain.pth.tar; "
           "the query encoder with its fc.0/fc.2 head (v1: one linear fc)",
           ("state_dict", ""), ("encoder_q.",),
           (("encoder_q.fc.", "head."), ("encoder_q.", "backbone."), ("", None))),
    Layout("mocov3",
           "MoCo v3 ResNets (facebookresearch/moco-v3): r-50-1000ep.pth.tar; the base encoder with its projector",
           ("state_dict", ""), ("base_encoder.",),
           (("base_encoder.fc.", "head."), ("base_encoder.", "backbone."), ("", None))),
    Layout("swav",
           "SwAV, DeepCluster-v2, SeLa-v2 (facebookresearch/swav): swav_800ep_pretrain.pth.tar, "
           "swav_RN50w2_400ep_pretrain.pth.tar (arch resnet50w2); backbone and projection head",
           ("state_dict", ""), ("prototypes.", "projection_head."),
           (("projection_head.", "head."), ("prototypes.", None), ("", "backbone."))),
    Layout("dino",
           "DINO (facebookresearch/dino): dino_resnet50_pretrain_full_checkpoint.pth (the teacher's backbone; "
           "DINO's head is not a projection head) or dino_resnet50_pretrain.pth",
           ("teacher", ""), ("head.last_layer.",),
           (("backbone.", "backbone."), ("head.", None), *PLAIN)),
    Layout("byol",
           "BYOL from solo-learn (vturrisi/solo-learn): its Lightning .ckpt; backbone.* with its projector.* head",
           ("state_dict", ""), ("projector.",),
           (("backbone.", "backbone."), ("projector.", "head."), ("", None))),
    Layout("simclr",
           "SimCLR v1 converted by tonylins/simclr-converter: resnet50-1x.pth, resnet50-2x.pth (arch resnet50w2), "
           "resnet50-4x.pth (resnet50w4); backbone only, its supervised fc dropped",
           ("state_dict",), ("layer1.",), PLAIN),
    Layout("torchvision",
           "a torchvision ResNet's state dict (DINO's backbone-only dino_resnet50_pretrain.pth too); fc dropped",
           ("", "state_dict", "model"), ("layer1.",), PLAIN),
    Layout("timm",
           "a timm model's state dict (model.safetensors, pytorch_model.bin, timm's train.py checkpoints); "
           "classifier dropped",
           ("", "state_dict", "model"), ("conv_stem.", "stem.", "patch_embed.", "stages.", "blocks."), PLAIN),
)
LAYOUT_NAMES = ("bingo", *(layout.name for layout in LAYOUTS))


def detect(checkpoint: Any, where: str) -> str:
    """The first layout of LAYOUTS whose container and marker keys a loaded checkpoint has; refused if none."""
    for layout in LAYOUTS:
        state = _state_dict(checkpoint, layout)
        if state is not None and any(key.startswith(layout.markers) for key in state):
            return layout.name
    raise UserError(f"{where} is in no checkpoint layout bingo knows ({', '.join(LAYOUT_NAMES)}); if it is one of "
                    "them, force it with --set teacher.layout=NAME (student.layout for a student)")


def convert(checkpoint: Any, name: str, where: str) -> dict[str, torch.Tensor]:
    """The Encoder state dict (`backbone.*`, `head.<i>.*`) held by a loaded checkpoint of layout `name`."""
    layout = _layout(name)
    state = _state_dict(checkpoint, layout) or {}
    converted = {}
    for key, value in state.items():
        target = _rename(key, layout.rules)
        if target is not None:
            converted[target] = value
    if not any(key.startswith("backbone.") for key in converted):
        raise UserError(f"{where} does not hold a {name} checkpoint ({layout.files}); set the layout to auto "
                        "to detect it")
    if "head.weight" in converted:  # a bare linear head (MoCo v1's fc, SwAV's without hidden layer): layer 0
        converted = {f"head.0.{key[5:]}" if key in ("head.weight", "head.bias") else key: value
                     for key, value in converted.items()}
    return converted


def head_spec(state: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    """The ModelConfig head fields that rebuild the head in an Encoder state dict; no head: embed_dim 0."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        index, _, param = key.removeprefix("head.").partition(".")
        if key.startswith("head.") and index.isdigit():
            layers.setdefault(int(index), {})[param] = value
    if not layers:
        return {"embed_dim": 0}
    linears = [i for i in sorted(layers) if "weight" in layers[i] and layers[i]["weight"].dim() == 2]
    norms = [i for i in layers if "running_mean" in layers[i]]
    if len(linears) not in (1, 2):
        raise UserError(f"{where}: its projection head has {len(linears)} linear layers, and bingo's heads have "
                        "1 or 2")
    first, last = layers[linears[0]], layers[linears[-1]]
    return {"head_hidden": first["weight"].shape[0] if len(linears) == 2 else 0,
            "head_bn": any(linears[0] < i < linears[-1] for i in norms),
            "head_out_bn": any(i > linears[-1] for i in norms),
            "head_bias": "bias" in first,
            "embed_dim": last["weight"].shape[0]}


def _layout(name: str) -> Layout:
    for layout in LAYOUTS:
        if layout.name == name:
            return layout
    raise UserError(f"unknown checkpoint layout '{name}'; choose auto or one of: {', '.join(LAYOUT_NAMES)}")


def _state_dict(checkpoint: Any, layout: Layout) -> dict[str, torch.Tensor] | None:
    """The state dict in the first of the layout's containers that the checkpoint has, wrapper prefixes stripped."""
    if not isinstance(checkpoint, dict):
        return None
    for container in layout.containers:
        state = checkpoint.get(container) if container else checkpoint
        if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return _strip_wrappers(state)
    return None


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    while prefix := next((p for p in WRAPPERS if all(key.startswith(p) for key in state)), None):
        state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def _rename(key: str, rules: tuple[tuple[str, str | None], ...]) -> str | None:
    for prefix, target in rules:
        if key.startswith(prefix):
            return None if target is None else target + key[len(prefix):]
    return None
