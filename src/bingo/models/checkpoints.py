"""Encoder files in and out: bingo's safetensors, the other projects' checkpoints (layouts.py), atomic saves.

Checkpoints are untrusted input: they load through safetensors or `torch.load(weights_only=True)`,
and a file that would need arbitrary code to unpickle is refused. A file that is no checkpoint (or
no array, for the loaders of .npy and .npz files) is refused in one line naming it and what to pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from bingo.config import DataConfig, ModelConfig
from bingo.errors import UserError
from bingo.models import layouts
from bingo.models.encoder import Encoder

ENCODER_FORMAT = "bingo-encoder/1"
DATA_KEYS = ("name", "channels", "image_size", "mean", "std")
ENCODER_FILES = "an encoder file from 'bingo pretrain' or 'bingo distill', or a checkpoint docs/models.md lists"
TORCH_FILES = "pass a .pth/.pth.tar/.ckpt saved by torch.save or a .safetensors file"
ARRAY_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)  # np.load on a file that is no array


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` then rename the temp file over `path`, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def array_error(err: Exception) -> str:
    """Why np.load refused a file, in a few words (not numpy's advice to unpickle it)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return "no NumPy header" if "pickled" in text else text


def save_encoder(encoder: Encoder, model: ModelConfig, data: DataConfig, path: Path) -> None:
    """Write an encoder's weights with the architecture and input format it needs (safetensors)."""
    arch = {k: v for k, v in vars(model).items() if k not in ("checkpoint", "layout")}
    meta = {"format": ENCODER_FORMAT, "model": json.dumps(arch),
            "data": json.dumps({k: getattr(data, k) for k in DATA_KEYS})}
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata=meta))


def encoder_info(path: Path) -> tuple[ModelConfig, dict] | None:
    """The architecture and input format stored in a bingo encoder file, or None for other layouts."""
    if Path(path).suffix != ".safetensors":
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a safetensors file ({err}); pass {ENCODER_FILES}") from None
    if meta.get("format") != ENCODER_FORMAT:
        return None
    arch = {"stem_width": 64, **json.loads(meta["model"])}  # files older than stem_width had a 64-channel stem
    return ModelConfig(**arch, checkpoint=str(path)), json.loads(meta["data"])


def detect_layout(state_or_file: str | Path | dict) -> str:
    """The layout of a checkpoint file or of a loaded checkpoint: `bingo` or a name of layouts.LAYOUTS."""
    if isinstance(state_or_file, dict):
        return layouts.detect(state_or_file, "the checkpoint")
    path = Path(state_or_file)
    return "bingo" if encoder_info(path) is not None else layouts.detect(_read_checkpoint(path), str(path))


def load_encoder(path: str | Path, model: ModelConfig, data: DataConfig) -> Encoder:
    """An Encoder with the weights of `path`, in the layout `model.layout` (auto: detected).

    bingo files bring their own architecture; other layouts are built as `model` says, with the
    projection head the checkpoint holds (shape read off its tensors) or none.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path, or pass {ENCODER_FILES}")
    info = encoder_info(path)
    if model.layout != "auto" and (model.layout == "bingo") != (info is not None):
        what = "a bingo encoder file" if info else "not a bingo encoder file"
        raise UserError(f"{path} is {what}, but the layout is set to '{model.layout}'; set it to auto")
    if info is not None:
        model, trained_on = info
        _check_input_format(path, trained_on, data)
        name, state = "bingo", load_file(str(path))
    else:
        checkpoint = _read_checkpoint(path)
        name = layouts.detect(checkpoint, str(path)) if model.layout == "auto" else model.layout
        state = layouts.convert(checkpoint, name, str(path))
        model = dataclasses.replace(model, **layouts.head_spec(state, str(path)))
    encoder = Encoder(model, data.channels)
    width = f" of width {model.width}" if model.width != 64 else ""
    if name == "bingo":  # the file names its own architecture: its weights do not match its metadata
        refusal, fix = (f"{path} is a damaged bingo encoder file (its weights do not fit the architecture its "
                        f"metadata names, {model.arch}{width})", f"pass {ENCODER_FILES}")
    else:
        refusal, fix = (f"{path} ({name} layout) does not fit the configured architecture ({model.arch}{width})",
                        "set teacher.arch/width (or student.*) to the checkpoint's")
    _load_strict(encoder, state, refusal, fix)
    return encoder


def _check_input_format(path: Path, trained_on: dict, data: DataConfig) -> None:
    got = (trained_on["channels"], trained_on["image_size"])
    want = (data.channels, data.image_size)
    if got != want:
        raise UserError(f"{path} was trained on {got[0]}-channel {got[1]} px images but this run uses "
                        f"{want[0]}-channel {want[1]} px ones; set data.channels/data.image_size to match")


def _read_checkpoint(path: Path) -> Any:
    """A foreign checkpoint as loaded: a safetensors file's tensors, or a torch file read with weights_only."""
    return load_file(str(path)) if path.suffix == ".safetensors" else _torch_load(path)


def _torch_load(path: Path, fix: str = TORCH_FILES, map_location: Any = "cpu") -> Any:
    """A torch file read with weights_only; one line ending in `fix` when it is none."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # DINO and timm keep their arguments in a Namespace; another program's pickle is refused below
            warnings.filterwarnings("ignore", "Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported operand" not in str(err):  # a pickle that names code to run
            raise UserError(f"{path} needs arbitrary code to unpickle and was refused; "
                            "convert it to a plain state dict or safetensors") from None
        raise UserError(f"cannot read checkpoint {path} (no pickle torch.save wrote): it is not a PyTorch checkpoint; "
                        f"{fix}") from None
    except Exception as err:  # noqa: BLE001 - a text file or another program's bytes fail anywhere in the unpickler
        reason = f"{type(err).__name__}: {str(err).splitlines()[0].split('. ')[0]}" if str(err) else type(err).__name__
        raise UserError(f"cannot read checkpoint {path} ({reason}): it is not a PyTorch checkpoint; {fix}") from None


def _load_strict(encoder: Encoder, state: dict[str, torch.Tensor], refusal: str, fix: str) -> None:
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = [f"{len(keys)} {what}: {few(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)) if keys]
        raise UserError(f"{refusal}; keys " + "; ".join(parts) + f"; {fix}")
    encoder.load_state_dict(state)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written via temp file + rename, read back with weights_only=True."""

    def save_checkpoint(self, checkpoint: dict, path: str, storage_options: Any = None) -> None:
        """Write a Lightning checkpoint atomically."""
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: str, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """Read a Lightning checkpoint without executing pickled code; one line when it is none (--resume)."""
        fix = "move it away to train the run again from the start with --resume, or choose another --out"
        checkpoint = _torch_load(Path(path), fix, map_location or "cpu")
        if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
            raise UserError(f"{path} is not a Lightning checkpoint (it holds no training state); {fix}")
        return checkpoint
