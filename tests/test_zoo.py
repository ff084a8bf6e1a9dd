"""The model zoo: cards, checksums, `zoo:NAME` checkpoints, `bingo zoo`, and refusals of damaged files."""

from __future__ import annotations

import pytest
import yaml

import bingo.zoo
from bingo.cli import main
from bingo.config import DataConfig, load_config
from bingo.errors import UserError
from bingo.models.checkpoints import load_encoder, save_encoder
from bingo.models.encoder import Encoder
from bingo.zoo import resolve_checkpoint, sha256, zoo_model, zoo_models
from conftest import tiny_model_config

SHIPPED = "fashion-mnist-teacher"


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A zoo folder holding one tiny model and its card."""
    monkeypatch.setattr(bingo.zoo, "zoo_folder", lambda: tmp_path)
    path = tmp_path / "tiny.safetensors"
    save_encoder(Encoder(tiny_model_config(), 3), tiny_model_config(), DataConfig(channels=3, image_size=16), path)
    card = {"name": "tiny", "file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path),
            "network": "resnet18 width 8", "method": "MoCo-v2", "data": "generated", "wall_time_s": 7.0,
            "machine": "a test", "accuracy": {"model": {"kNN@10 top-1": 50.0}, "raw pixels": {"kNN@10 top-1": 40.0}}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(card))
    return path


def test_a_zoo_name_resolves_to_the_checked_file(zoo):
    assert [m.name for m in zoo_models()] == ["tiny"]
    assert zoo_model("tiny").file == zoo
    cfg = load_config("demo", None, ["teacher.checkpoint=zoo:tiny"])
    assert cfg.teacher.checkpoint == str(zoo)
    assert resolve_checkpoint("/some/file.safetensors") == "/some/file.safetensors"
    encoder = load_encoder(cfg.teacher.checkpoint, cfg.teacher, DataConfig(channels=3, image_size=16))
    assert encoder.backbone.conv1.out_channels == Encoder(tiny_model_config(), 3).backbone.conv1.out_channels


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated or replaced"),
    (lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 1])), "altered"),
])
def test_a_damaged_zoo_file_is_refused_with_the_way_back(zoo, damage, says):
    damage(zoo)
    with pytest.raises(UserError, match=says) as err:
        zoo_model("tiny")
    assert "git checkout -- " in str(err.value) and "demo.pretrain=true" in str(err.value)
    with pytest.raises(UserError, match=says):
        load_config("demo", None, ["teacher.checkpoint=zoo:tiny"])


def test_an_unknown_zoo_name_lists_what_ships(zoo):
    with pytest.raises(UserError, match=r"no model 'nope' in bingo's zoo \(shipped: tiny\)"):
        resolve_checkpoint("zoo:nope")


def test_zoo_command_lists_and_shows(zoo, capsys, bingo_logger_guard):
    assert main(["zoo", "list"]) == 0
    assert capsys.readouterr().out.startswith("zoo:tiny: resnet18 width 8, MoCo-v2 on generated; kNN@10 top-1 50.0 "
                                              "(pixels 40.0)")
    assert main(["zoo", "show", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert f"sha256: {sha256(zoo)}" in shown and "use it as --teacher zoo:tiny" in shown
    zoo.unlink()
    assert main(["zoo", "show", "tiny"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["zoo", "show"]) == 2


def test_the_shipped_teacher_matches_its_card_and_is_ahead_of_raw_pixels_on_linear():
    model = zoo_model(SHIPPED)  # checks size and sha256
    card = model.card
    for key in ("command", "machine", "wall_time_s", "recipe", "curve", "bag_purity"):
        assert card[key], key
    ours, pixels = card["accuracy"]["model"], card["accuracy"]["raw pixels"]
    assert ours["linear top-1"] > pixels["linear top-1"] and ours["kNN@200 top-1"] > pixels["kNN@200 top-1"]
    assert ours["kNN@10 top-1"] > card["accuracy"]["random weights, BN at init"]["kNN@10 top-1"]  # not above pixels
    cfg = load_config("demo")
    encoder = load_encoder(model.file, cfg.teacher, cfg.data)
    assert all(p.dtype.itemsize == 4 for p in encoder.parameters())  # float16 on disk, float32 once loaded
