"""Models that ship with bingo, trained by its own commands: each a safetensors encoder and a card.

A card (NAME.yaml beside NAME.safetensors) records how the model was made (command, commit, machine,
wall time), what it scores beside raw pixels and random weights, and the file's sha256. Any
`teacher.checkpoint` or `student.checkpoint` may name a shipped model as `zoo:NAME`; the file is
checked against its card before use, so a missing, truncated or altered file is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bingo.errors import UserError

PREFIX = "zoo:"


@dataclass(frozen=True)
class ZooModel:
    """One shipped model: its name, weight file and card."""

    name: str
    file: Path
    card: dict[str, Any]

    def summary(self) -> str:
        """One line: name, network, data, accuracies beside raw pixels."""
        c = self.card
        scores = c.get("accuracy", {})
        own, pixels = scores.get("model", {}), scores.get("raw pixels", {})
        accuracy = ", ".join(f"{metric} {value:.1f} (pixels {pixels.get(metric, float('nan')):.1f})"
                             for metric, value in own.items())
        return (f"{self.name}: {c['network']}, {c['method']} on {c['data']}; {accuracy}; "
                f"trained in {c['wall_time_s'] / 3600:.1f} h on {c['machine']}")


def zoo_folder() -> Path:
    """The folder the shipped models lie in."""
    return Path(str(resources.files("bingo") / "zoo"))


def zoo_models() -> list[ZooModel]:
    """Every shipped model, by name."""
    models = []
    for card_path in sorted(zoo_folder().glob("*.yaml")):
        card = yaml.safe_load(card_path.read_text())
        models.append(ZooModel(card["name"], card_path.with_name(card["file"]), card))
    return models


def zoo_model(name: str) -> ZooModel:
    """The shipped model called `name`, its file checked against the card's size and sha256."""
    models = {m.name: m for m in zoo_models()}
    if name not in models:
        known = ", ".join(models) or "none"
        raise UserError(f"no model '{name}' in bingo's zoo (shipped: {known}); 'bingo zoo list' shows them")
    model = models[name]
    restore = (f"restore it with 'git checkout -- {_repo_relative(model.file)}', or train a teacher instead "
               "with --set demo.pretrain=true")
    if not model.file.is_file():
        raise UserError(f"zoo model {name}: {model.file} is missing; {restore}")
    size = model.file.stat().st_size
    if size != model.card["bytes"]:
        raise UserError(f"zoo model {name}: {model.file} has {size} bytes, its card says {model.card['bytes']} "
                        f"(truncated or replaced); {restore}")
    if sha256(model.file) != model.card["sha256"]:
        raise UserError(f"zoo model {name}: {model.file} does not match the sha256 in its card (altered); {restore}")
    return model


def resolve_checkpoint(value: str | None) -> str | None:
    """A checkpoint setting with `zoo:NAME` replaced by the checked path of that shipped model."""
    if value is None or not str(value).startswith(PREFIX):
        return value
    return str(zoo_model(str(value).removeprefix(PREFIX)).file)


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _repo_relative(path: Path) -> str:
    parts = path.parts
    return str(Path(*parts[parts.index("src"):])) if "src" in parts else str(path)
