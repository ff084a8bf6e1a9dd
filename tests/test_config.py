"""Config: defaults, presets, YAML files, stage-relative and absolute overrides, type checks, round trip."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from bingo.cli import SET_EXAMPLES, STAGES, build_parser
from bingo.config import Config, from_dict, load_config, preset_names, save_config, to_dict
from bingo.errors import UserError
from bingo.methods import resolve_defaults


def test_defaults_are_the_papers():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.distill.bingo.temperature == 0.2 and cfg.distill.bingo.queue_size == 65536
    assert (cfg.distill.bingo.lam_self, cfg.distill.bingo.lam_other, cfg.distill.bingo.warmup_epochs) == (0.5, 0.5, 10)
    assert cfg.bags.k == 5 and cfg.student.embed_dim == 128
    assert cfg.distill.optim.lr == 0.03 and cfg.distill.optim.momentum == 0.9 and cfg.distill.optim.epochs == 200


@pytest.mark.parametrize(("method", "head", "group", "split"), [
    ("bingo", 2048, 0, False), ("moco", 512, 32, True), ("disco", 512, 32, True), ("seed", 512, 0, False),
    ("compress-2q", 2048, 0, False), ("simreg", 2048, 0, False)])
def test_settings_left_null_take_each_methods_official_value(method, head, group, split):
    cfg = load_config()  # a ResNet-18: 512 features; BINGO's head is 2048 wide, MoCo-v2's, DisCo's and SEED's 512
    assert (cfg.student.head_hidden, cfg.distill.moco.shuffle_bn_group, cfg.distill.moco.split_queries) == (None,) * 3
    resolve_defaults(cfg, method)
    assert (cfg.student.head_hidden, cfg.distill.moco.shuffle_bn_group, cfg.distill.moco.split_queries) == \
        (head, group, split)


def test_settings_given_are_kept_whatever_the_method():
    cfg = load_config(None, None, ["student.head_hidden=1024", "distill.moco.shuffle_bn_group=0"])
    resolve_defaults(cfg, "moco")
    assert (cfg.student.head_hidden, cfg.distill.moco.shuffle_bn_group, cfg.distill.moco.split_queries) == \
        (1024, 0, False)
    mobilenet = load_config(None, None, ["student.arch=mobilenetv3_small_100"])
    resolve_defaults(mobilenet, "seed")
    assert mobilenet.student.head_hidden == 1024  # its features: after MobileNet-v3's head convolution


def test_null_is_refused_where_a_setting_needs_a_value():
    with pytest.raises(UserError, match="'distill.optim.lr' expects float, got null"):
        load_config(None, None, ["distill.optim.lr=null"])
    with pytest.raises(UserError, match="'student.head_hidden' expects int | None, got true"):
        load_config(None, None, ["student.head_hidden=true"])


def test_presets():
    assert {"demo", "imagenet-r18-r50"} <= set(preset_names())
    demo = load_config("demo")
    assert demo.data.name == "fashion-mnist" and demo.data.channels == 1 and demo.data.image_size == 28
    assert demo.distill.bingo.queue_size == 4096
    assert demo.distill.bingo.temperature == 0.1  # set by the preset
    assert demo.distill.bingo.lam_other == 0.5  # not in the preset: the default stays
    imagenet = load_config("imagenet-r18-r50")
    assert imagenet.teacher.arch == "resnet50" and imagenet.student.arch == "resnet18"
    with pytest.raises(UserError, match="unknown preset 'nope'; choose one of: demo"):
        load_config("nope")


def test_preset_then_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("distill:\n  optim: {epochs: 7, lr: 0.5}\n  bingo: {lam_self: 0.25}\ndata: {root: /a}\n")
    cfg = load_config("demo", str(path), ["optim.lr=0.125", "data.root=/b"], stage="distill")
    assert cfg.distill.optim.epochs == 7  # file over preset (3)
    assert cfg.distill.optim.lr == 0.125  # stage-relative override over file
    assert cfg.pretrain.optim.lr == 0.06  # the other stage keeps the preset's value
    assert cfg.distill.bingo.lam_self == 0.25 and cfg.distill.bingo.lam_other == 0.5
    assert cfg.data.root == "/b" and cfg.data.name == "fashion-mnist"


def test_stage_relative_and_absolute_keys():
    cfg = load_config("demo", None, ["optim.lr=0.5", "moco.queue_size=128"], stage="pretrain")
    assert cfg.pretrain.optim.lr == 0.5 and cfg.distill.optim.lr == 0.2  # the preset's distill lr
    assert cfg.pretrain.moco.queue_size == 128 and cfg.distill.moco.queue_size == 4096
    cfg = load_config("demo", None, ["distill.optim.lr=0.7", "bingo.queue_size=64"], stage="distill")
    assert cfg.distill.optim.lr == 0.7 and cfg.distill.bingo.queue_size == 64
    cfg = load_config("demo", None, ["k=9"], stage="bags")
    assert cfg.bags.k == 9
    cfg = load_config(None, None, ["distill.optim.lr=0.7", "seed=3"], stage="pretrain")  # absolute everywhere
    assert cfg.distill.optim.lr == 0.7 and cfg.pretrain.optim.lr == 0.03 and cfg.seed == 3
    with pytest.raises(UserError, match="unknown config key 'optim.lr' .here give the full path: pretrain.optim.lr"):
        load_config(None, None, ["optim.lr=0.1"])  # no stage: ambiguous, refused


def test_override_values_are_parsed_and_coerced():
    cfg = load_config(None, None, ["optim.lr=2", "optim.weight_decay=1e-4", "optim.momentum=5.0e-1",
                                   "data.root=123", "eval.knn_k=[1, 2]", "data.download=false",
                                   "trainer.devices=2", "trainer.limit_train_batches=0.5", "data.root=x=y"],
                      stage="distill")
    assert cfg.distill.optim.lr == 2.0 and isinstance(cfg.distill.optim.lr, float)
    assert cfg.distill.optim.weight_decay == 1e-4 and isinstance(cfg.distill.optim.weight_decay, float)
    assert cfg.distill.optim.momentum == 0.5
    assert cfg.eval.knn_k == [1, 2] and cfg.data.download is False
    assert cfg.trainer.devices == 2 and cfg.trainer.limit_train_batches == 0.5
    assert cfg.data.root == "x=y"  # split at the first '='


@pytest.mark.parametrize("item,message", [
    ("optim.epochs=abc", "'distill.optim.epochs' expects int, got \"abc\""),
    ("optim.epochs=1.5", "expects int"),
    ("optim.epochs=true", "expects int"),
    ("data.download=maybe", "expects bool"),
    ("eval.knn_k=5", "expects list"),
    ("optim.lr=fast", "expects float"),
    ("optim.lrr=0.1", "unknown config key 'optim.lrr' (did you mean 'distill.optim.lr'?)"),
    ("nosuchkey=1", "unknown config key 'nosuchkey'"),
    ("optim.lr", "must look like key=value"),
])
def test_bad_overrides(item, message):
    with pytest.raises(UserError) as err:
        load_config("demo", None, [item], stage="distill")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(None, str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    for text, message in [("data: [unclosed", "not valid YAML"), ("- a\n- b\n", "must hold a mapping"),
                          ("data: 3\n", "'data' is a section"),
                          ("data: {rooot: x}\n", "unknown config key 'data.rooot'"),
                          ("distill: {optim: {epochs: many}}\n", "expects int")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
            load_config(None, str(bad))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("demo", None, ["optim.lr=0.25", "data.mean=[0.1]", "trainer.devices=auto",
                                     "eval.knn_k=[3]", "optim.weight_decay=1e-5"], stage="distill")
    path = save_config(cfg, tmp_path)
    assert path == tmp_path / "config.yaml"
    loaded = yaml.safe_load(path.read_text())
    assert loaded == to_dict(cfg)
    again = from_dict(loaded)
    assert again == cfg
    assert dataclasses.is_dataclass(again.distill.bingo) and again.distill.optim.lr == 0.25
    # The saved file is also a valid --config file that reproduces the run.
    assert load_config(None, str(path)) == cfg


@pytest.mark.parametrize("command", STAGES)
def test_every_subcommand_help_example_works_there(command):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    help_text = subparsers.choices[command].format_help()
    example = SET_EXAMPLES[command]
    assert f"--set {example}" in " ".join(help_text.split())
    preset = "repro" if command == "repro" else "demo"
    load_config(preset, None, [example], stage=command)  # accepted: no UserError


def test_a_stage_relative_key_of_another_stage_is_refused_with_a_hint():
    with pytest.raises(UserError, match="unknown config key 'optim.lr' .here give the full path: pretrain.optim.lr"):
        load_config("demo", None, ["optim.lr=0.06"], stage="demo")


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, native, expected):
    from bingo import training
    from bingo.config import TrainerConfig

    monkeypatch.setattr(training.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    assert training.lightning_precision(TrainerConfig(precision="auto", accelerator="cpu")) == expected
    assert training.lightning_precision(TrainerConfig(precision="16-mixed")) == "16-mixed"  # explicit: kept
