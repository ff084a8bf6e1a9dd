"""The run store: every stage's folder records the settings that define its artifact, and their hash.

One rule decides when earlier work counts, for every stage and every experiment built on them:
reuse means the same hash and a finished artifact; resume means the same hash and a checkpoint. A
setting that defines the artifact and changed is refused (an evaluation, which loses nothing but
time, may be made again); a setting that only says how a run is carried out (progress bars,
loggers, loader workers, where the data lie) is not part of the hash and never forces a retrain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bingo.config import Config, flat_settings, save_config
from bingo.errors import UserError
from bingo.models.checkpoints import atomic_write
from bingo.training import is_rank_zero, newest_checkpoint

log = logging.getLogger("bingo")
RUN_FILE = "run.json"
# how a run is carried out, not what it makes; model checkpoints enter as their files' hashes (inputs)
HOW_NOT_WHAT = ("trainer.progress_bar", "trainer.loggers", "trainer.log_every_n_steps",
                "trainer.checkpoint_every_minutes", "data.num_workers", "data.download", "data.root",
                "data.decode_cache", "data.max_bad_images", "teacher.checkpoint", "student.checkpoint",
                "bags.features", "distill.bags", "distill.teacher_cache")


# settings added after runs were stored, at the value that does what bingo did before them: left out of the hash at
# that value, so the runs stored before still count
ADDED_LATER = {"distill.moco.split_queries": False, "pretrain.moco.split_queries": False}


@dataclass(frozen=True)
class Artifact:
    """What a stage makes in a run folder: the stage, its product file and the settings that define it."""

    stage: str  # pretrain | embed | cache | bags | distill | eval
    product: str  # the file whose presence, with run.json's `finished`, says the artifact is complete
    settings: dict[str, Any]  # dotted setting -> value; `input.NAME` -> identity of an input file or data set

    @property
    def digest(self) -> str:
        """Short sha256 of the settings: the artifact's identity."""
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]


def defining_settings(cfg: Config, sections: tuple[str, ...], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings under `sections` (dotted prefixes) but those in HOW_NOT_WHAT (and those of ADDED_LATER at their
    earlier behaviour), with the inputs' identities."""
    chosen = {key: value for key, value in flat_settings(cfg).items()
              if any(key == s or key.startswith(f"{s}.") for s in sections) and key not in HOW_NOT_WHAT
              and not (key in ADDED_LATER and value == ADDED_LATER[key])}
    return chosen | {f"input.{name}": value for name, value in (inputs or {}).items()}


def drop_added_later(tree: dict) -> dict:
    """`tree` (nested config sections) without the ADDED_LATER settings that hold their earlier value (in place)."""
    for dotted, earlier in ADDED_LATER.items():
        *sections, leaf = dotted.split(".")
        node = tree
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == earlier:
            del node[leaf]
    return tree


def open_run(folder: Path, artifact: Artifact, resume: bool, redo_changed: bool = False) -> str:
    """What to do in `folder`: 'finished' (reuse its product), 'resume' (continue from its checkpoint) or 'new'.

    Refuses, in one line naming the first differing setting, a folder made with other settings
    (`redo_changed`: make it again instead), and an unfinished run when `resume` is not set.
    Writes nothing: `start_run` claims the folder once the caller's own checks have passed.
    """
    record = read_run(folder)
    if not is_rank_zero():  # rank 0 has decided and written run.json; the other processes follow it
        return _state(folder, artifact, record) if record.get("hash") == artifact.digest else "new"
    if record and record.get("hash") != artifact.digest:
        if not redo_changed:
            raise UserError(_changed(folder, record, artifact))
        log.info("%s was made with other settings (%s): making it again", folder, _first_change(record, artifact))
        return "new"
    if not record and (folder / "config.yaml").exists():
        raise UserError(f"{folder} holds a run made by an older bingo or another command (it has no {RUN_FILE}); "
                        "choose another --out, or remove that folder")
    state = _state(folder, artifact, record) if record else "new"
    if state == "finished":
        log.info("%s: %s already made with these settings (%s); kept", folder, artifact.product, artifact.digest)
    elif record and not resume:
        raise UserError(f"{folder} already holds a run; pass --resume to continue it, or choose another --out")
    return state


def start_run(folder: Path, artifact: Artifact, cfg: Config) -> None:
    """Claim `folder` for `artifact` (rank 0): its config.yaml and an unfinished run.json; the files of an
    artifact made with other settings are removed first (`open_run` allowed it)."""
    if not is_rank_zero():
        return
    if read_run(folder).get("hash") not in (None, artifact.digest):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder)
    _write(folder, {"stage": artifact.stage, "hash": artifact.digest, "finished": False,
                    "settings": artifact.settings})


def _state(folder: Path, artifact: Artifact, record: dict) -> str:
    if record.get("finished") and (folder / artifact.product).exists():
        return "finished"
    return "resume" if newest_checkpoint(folder) is not None else "new"


def finish_run(folder: Path, artifact: Artifact) -> None:
    """Mark the artifact in `folder` complete (rank 0; after its product and results are written)."""
    if is_rank_zero():
        _write(folder, {"stage": artifact.stage, "hash": artifact.digest, "finished": True,
                        "settings": artifact.settings})


def read_run(folder: Path) -> dict:
    """The folder's run.json ({} when it has none)."""
    path = folder / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write(folder: Path, record: dict) -> None:
    if is_rank_zero():
        text = json.dumps(record, indent=2)
        atomic_write(folder / RUN_FILE, lambda tmp: Path(tmp).write_text(text))


def _first_change(record: dict, artifact: Artifact) -> str:
    stored, wanted = record.get("settings", {}), artifact.settings
    if record.get("stage") != artifact.stage:
        return f"it holds a {record.get('stage')} run, not {artifact.stage}"
    key = next((k for k in sorted(stored.keys() | wanted.keys()) if stored.get(k) != wanted.get(k)), "?")
    return f"{key}={stored.get(key)!r}, now {wanted.get(key)!r}"


def _changed(folder: Path, record: dict, artifact: Artifact) -> str:
    return (f"{folder} was made with other settings ({_first_change(record, artifact)}); keep its settings, "
            "choose another --out, or remove that folder to make it again")
