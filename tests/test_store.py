"""The run store: which settings define an artifact, and when a folder is reused, resumed, refused or made again."""

from __future__ import annotations

import pytest

from bingo.errors import UserError
from bingo.methods import METHODS, method_settings, resolve_defaults
from bingo.stages.distill import distill_artifact
from bingo.store import Artifact, defining_settings, finish_run, open_run, read_run, start_run
from conftest import snapshot, tiny_config

INPUTS = {"dataset": {"name": "generated", "fingerprint": "ab"}, "teacher": "t1", "bags": "b1"}


def artifact(*overrides: str, inputs: dict = INPUTS, method: str = "bingo") -> Artifact:
    cfg = tiny_config(f"distill.method={method}", *overrides)
    resolve_defaults(cfg, method)  # as `bingo distill` does before it names the run
    return distill_artifact(cfg, inputs, runs_teacher=True)


def test_how_a_run_is_carried_out_does_not_define_it():
    same = artifact("trainer.progress_bar=true", "trainer.loggers=[csv,tensorboard]", "data.num_workers=3",
                    "data.root=/elsewhere", "trainer.checkpoint_every_minutes=5", "teacher.checkpoint=/t.safetensors",
                    "distill.bags=/moved/bags.npz", "monitor.every_n_epochs=1", "eval.linear.epochs=9",
                    "bags.k=7", "compare.seeds=[4]")
    assert same.digest == artifact().digest


@pytest.mark.parametrize("change", ["distill.optim.lr=0.5", "seed=3", "student.width=16", "augment.flip=false",
                                    "trainer.precision=bf16-mixed", "data.image_size=20",
                                    "distill.bingo.cutmix=false", "teacher.width=16"])
def test_what_a_student_is_trained_with_defines_it(change):
    assert artifact(change).digest != artifact().digest


def test_inputs_define_it():
    assert artifact(inputs={**INPUTS, "bags": "b2"}).digest != artifact().digest
    assert artifact(inputs={**INPUTS, "dataset": {"name": "generated", "fingerprint": "cd"}}).digest \
        != artifact().digest


@pytest.mark.parametrize("method", METHODS)
def test_only_the_methods_own_section_defines_its_student(method):
    changes = ["distill.bingo.temperature=0.7", "distill.seed.student_temperature=0.7",
               "distill.compress.temperature=0.7", "distill.disco.weight=0.7", "distill.simreg.predictor_hidden=7",
               "distill.moco.temperature=0.7", "distill.moco.shuffle_bn_group=2", "distill.moco.split_queries=true"]
    for change in changes:
        key = change.split("=")[0]
        read = any(key == s or key.startswith(f"{s}.") for s in method_settings(method))
        assert (artifact(change, method=method).digest != artifact(method=method).digest) == read, (method, change)
    assert method_settings(method)[3:] and all(s.startswith("distill.") for s in method_settings(method))


def test_a_setting_added_later_defines_a_run_only_away_from_what_bingo_did_before_it():
    """distill.moco.split_queries came after runs were stored: false (keys alone) is what those runs did, so it is
    left out of their hash and they still count; true is another student."""
    assert "distill.moco.split_queries" not in artifact().settings
    assert artifact("distill.moco.split_queries=true").settings["distill.moco.split_queries"] is True
    assert artifact("distill.moco.split_queries=false").digest == artifact().digest


def test_a_setting_left_to_the_method_is_named_by_its_value_so_earlier_runs_still_count():
    """Null head width and shuffle-BN (the method's own) are hashed as the values they resolve to: BINGO's 2048 and
    no shuffle-BN are what every earlier BINGO run recorded."""
    left = ("student.head_hidden=null", "distill.moco.shuffle_bn_group=null", "distill.moco.split_queries=null")
    assert artifact(*left).digest == artifact("student.head_hidden=2048", "distill.moco.shuffle_bn_group=0").digest
    moco = artifact(*left, method="moco").settings  # the tiny student: a ResNet-18 of width 8, 64 features
    assert [moco[key] for key in ("student.head_hidden", "distill.moco.shuffle_bn_group",
                                       "distill.moco.split_queries")] == [64, 32, True]
    assert artifact(*left, method="moco").digest != artifact(method="moco").digest


def test_defining_settings_are_flat_dotted_keys_with_inputs():
    settings = defining_settings(tiny_config(), ("seed", "distill.optim"), {"teacher": "t1"})
    assert settings == {"seed": 0, **{f"distill.optim.{k}": v for k, v in
                                      vars(tiny_config().distill.optim).items()}, "input.teacher": "t1"}


def test_a_new_folder_is_started_finished_then_reused(tmp_path):
    folder, cfg, made = tmp_path / "run", tiny_config(), artifact()
    assert open_run(folder, made, resume=False) == "new" and not folder.exists()  # deciding writes nothing
    start_run(folder, made, cfg)
    assert read_run(folder) == {"stage": "distill", "hash": made.digest, "finished": False, "settings": made.settings}
    assert (folder / "config.yaml").exists()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        open_run(folder, made, resume=False)  # interrupted: only --resume continues it
    assert open_run(folder, made, resume=True) == "new"  # no checkpoint: it starts again
    (folder / made.product).write_bytes(b"student")
    finish_run(folder, made)
    assert open_run(folder, made, resume=False) == "finished"
    (folder / made.product).unlink()  # a finished run whose product is gone is not reused
    assert open_run(folder, made, resume=True) == "new"


def test_an_interrupted_run_with_a_checkpoint_resumes(tmp_path):
    folder, made = tmp_path / "run", artifact()
    start_run(folder, made, tiny_config())
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"state")
    assert open_run(folder, made, resume=True) == "resume"


def test_a_folder_made_with_other_settings_is_refused_untouched(tmp_path):
    folder = tmp_path / "run"
    start_run(folder, artifact(), tiny_config())
    before = snapshot(folder)
    with pytest.raises(UserError, match=r"run was made with other settings \(distill.optim.lr=0.2, now 0.5\); "
                                        "keep its settings, choose another --out, or remove that folder"):
        open_run(folder, artifact("distill.optim.lr=0.5"), resume=True)
    with pytest.raises(UserError, match=r"input.bags='b1', now 'b2'"):
        open_run(folder, artifact(inputs={**INPUTS, "bags": "b2"}), resume=True)
    assert snapshot(folder) == before


def test_an_evaluation_with_other_settings_is_made_again(tmp_path):
    folder, cfg = tmp_path / "eval", tiny_config()
    old, new = (Artifact("eval", "results.json", {"eval.knn_k": k}) for k in ([3], [5]))
    start_run(folder, old, cfg)
    (folder / "results.json").write_text("{}")
    (folder / "linear").mkdir()  # the old evaluation's checkpoints must not be resumed by the new one
    finish_run(folder, old)
    assert open_run(folder, new, resume=True, redo_changed=True) == "new"
    assert (folder / "results.json").exists()  # deciding removes nothing
    start_run(folder, new, cfg)
    assert not (folder / "results.json").exists() and not (folder / "linear").exists()
    assert read_run(folder)["hash"] == new.digest


def test_a_folder_without_run_record_is_refused(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(UserError, match="holds a run made by an older bingo or another command"):
        open_run(folder, artifact(), resume=True)


@pytest.mark.parametrize("key,changes", [  # a setting, and whether it changes an evaluation by these protocols
    ("eval.transfer.name=digits", {("knn", "linear"): False, ("transfer",): True}),
    ("eval.knn_k=[3]", {("linear",): False, ("knn",): True}),
    ("eval.linear.epochs=7", {("knn",): False, ("linear",): True, ("transfer",): True}),
    ("eval.semi.epochs=3", {("knn", "linear"): False, ("semi",): True}),
    ("seed=3", {("knn",): True, ("semi",): True}),
])
def test_an_evaluation_depends_on_the_settings_its_protocols_read(key, changes):
    from bingo.stages.evaluate import evaluation_artifact

    for protocols, changed in changes.items():
        digests = {evaluation_artifact(tiny_config(*extra), "m", "student", protocols).digest
                   for extra in ((), (key,))}
        assert (len(digests) == 2) == changed, (key, protocols)
