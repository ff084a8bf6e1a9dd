"""The peers' losses against their formulas (loops, float64), and one training step of every method."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bingo.config import BingoConfig, CompressConfig, DiscoConfig, MoCoConfig, OptimConfig, SeedConfig, SimRegConfig
from bingo.errors import UserError
from bingo.methods import Bingo, Compress, DisCo, MoCo, Seed, SimReg
from bingo.methods.base import Method
from bingo.methods.losses import compress_loss, cosine_regression, seed_loss, squared_error
from bingo.models.encoder import Encoder
from conftest import tiny_encoder, tiny_model_config
from test_losses import unit

B = 8


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def test_seed_loss_matches_formula():
    s, t, queue = unit(4, 6, seed=1), unit(4, 6, seed=2), unit(5, 6, seed=3)
    tau_s, tau_t = 0.2, 0.07
    got = seed_loss(s, t, queue, tau_s, tau_t)
    for i in range(4):
        p_t = softmax([float(t[i] @ t[i]) / tau_t] + [float(t[i] @ q) / tau_t for q in queue])
        p_s = softmax([float(s[i] @ t[i]) / tau_s] + [float(s[i] @ q) / tau_s for q in queue])
        assert float(got[i]) == pytest.approx(-sum(a * math.log(b) for a, b in zip(p_t, p_s, strict=True)))


def test_seed_loss_with_a_tiny_teacher_temperature_is_cross_entropy_on_the_own_key():
    s, t, queue = unit(4, 6, seed=1), unit(4, 6, seed=2), unit(5, 6, seed=3)
    got = seed_loss(s, t, queue, 0.2, 1e-4)  # pT is one-hot on t·t = 1, the largest similarity
    for i in range(4):
        p_s = softmax([float(s[i] @ t[i]) / 0.2] + [float(s[i] @ q) / 0.2 for q in queue])
        assert float(got[i]) == pytest.approx(-math.log(p_s[0]))


@pytest.mark.parametrize("banks", [1, 2])
def test_compress_loss_matches_formula(banks):
    s, t = unit(3, 6, seed=1), unit(3, 6, seed=2)
    teacher_bank = unit(5, 6, seed=3)
    student_bank = teacher_bank if banks == 1 else unit(5, 6, seed=4)
    got = compress_loss(s, t, student_bank, teacher_bank, 0.04)
    for i in range(3):
        p_t = softmax([float(t[i] @ b) / 0.04 for b in teacher_bank])
        p_s = softmax([float(s[i] @ b) / 0.04 for b in student_bank])
        want = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s, strict=True))
        assert float(got[i]) == pytest.approx(want, rel=1e-6)
    assert float(compress_loss(t, t, teacher_bank, teacher_bank, 0.04).abs().max()) < 1e-9  # KL(p || p) = 0


def test_squared_error_and_cosine_regression():
    s, t = unit(3, 4, seed=1), unit(3, 4, seed=2)
    want = [sum(float((s[i, j] - t[i, j]) ** 2) for j in range(4)) for i in range(3)]
    assert squared_error(s, t).tolist() == pytest.approx(want)
    prediction, target = 3 * unit(3, 4, seed=5), 0.5 * unit(3, 4, seed=6)  # scale does not matter
    got = cosine_regression(prediction, target)
    for i in range(3):
        cos = float(prediction[i] @ target[i]) / float(prediction[i].norm() * target[i].norm())
        assert float(got[i]) == pytest.approx(2 - 2 * cos)


def test_peer_losses_send_no_gradient_to_teacher_or_banks():
    s = unit(3, 6, seed=1).requires_grad_()
    t, queue, bank = (unit(3, 6, seed=2).requires_grad_(), unit(5, 6, seed=3).requires_grad_(),
                      unit(5, 6, seed=4).requires_grad_())
    (seed_loss(s, t, queue, 0.2, 0.01).sum() + compress_loss(s, t, bank, queue, 0.04).sum()
     + squared_error(s, t).sum() + cosine_regression(s, t).sum()).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and queue.grad is None and bank.grad is None


OPTIM = OptimConfig(epochs=1, batch_size=B)


def wide_student(embed_dim: int) -> Encoder:
    torch.manual_seed(0)
    return Encoder(dataclasses.replace(tiny_model_config(), embed_dim=embed_dim), 3)


def pair(student: int | Encoder = 0) -> dict:
    """A tiny student (seed, or the encoder itself) and teacher, with the test's optimiser settings."""
    return {"student": tiny_encoder(student) if isinstance(student, int) else student, "teacher": tiny_encoder(1),
            "optim": OPTIM}


BUILDERS = {
    "moco": lambda: MoCo(student=tiny_encoder(0), optim=OPTIM, moco=MoCoConfig(queue_size=32)),
    "seed": lambda: Seed(**pair(), seed=SeedConfig(queue_size=32)),
    "compress-1q": lambda: Compress(**pair(), compress=CompressConfig(bank_size=32), banks=1),
    "compress-2q": lambda: Compress(**pair(), compress=CompressConfig(bank_size=32), banks=2),
    "disco": lambda: DisCo(**pair(), moco=MoCoConfig(queue_size=32), disco=DiscoConfig()),
    "simreg": lambda: SimReg(**pair(), simreg=SimRegConfig(predictor_hidden=32)),
    "bingo": lambda: Bingo(**pair(), bingo=BingoConfig(queue_size=32)),
    "bingo-momentum-keys": lambda: Bingo(**{**pair(), "teacher": None},
                                         bingo=BingoConfig(queue_size=32, keys="momentum", key_momentum=0.5)),
}


def batch_for(module: Method) -> tuple:
    g = torch.Generator().manual_seed(7)
    views = [torch.randn(B, 3, 16, 16, generator=g) for _ in range(module.views.count)]
    if module.views.needs_bags:
        return views, torch.zeros(B, dtype=torch.long), torch.arange(B), torch.arange(B).flip(0)
    return views, torch.zeros(B, dtype=torch.long), torch.arange(B)


# What one step changes: the trained networks, momentum copies, and queues or banks (the teacher never).
CHANGED = {
    "moco": {"student", "key_encoder", "queue"},
    "seed": {"student", "queue"},
    "compress-1q": {"student", "to_teacher", "teacher_bank"},
    "compress-2q": {"student", "momentum_student", "teacher_bank", "student_bank"},
    "disco": {"student", "key_encoder", "queue"},
    "simreg": {"student", "predictor"},
    "bingo": {"student", "queue"},
    "bingo-momentum-keys": {"student", "key_encoder", "queue"},
}


def test_disco_weighs_its_squared_error_as_the_official_per_gpu_sum_whatever_the_batch(monkeypatch):
    logged = []
    monkeypatch.setattr(Method, "log_terms", lambda self, terms, batch_size: logged.append(terms))
    module = BUILDERS["disco"]().train()
    (first, second), labels, indices = batch_for(module)
    module.training_step(((first, second), labels, indices), 0)
    module.training_step(((first.repeat(2, 1, 1, 1), second.repeat(2, 1, 1, 1)), labels.repeat(2),
                          indices.repeat(2)), 0)  # the same images twice: twice the batch, the same mean
    with torch.no_grad():  # no optimiser step was taken: the student is the one both steps saw
        errors = [squared_error(module.student(view), module.teacher(view)) for view in (first, second)]
    assert float(logged[0]["distill"].detach()) == pytest.approx(float(logged[1]["distill"].detach()), rel=1e-4)
    assert float(logged[0]["distill"].detach()) == pytest.approx(32 * float(sum(e.mean() for e in errors)), rel=1e-4)
    assert len(first) != 32  # so that a sum over the batch would differ
    with pytest.raises(UserError, match="images_per_sum must be at least 1"):
        DisCo(**pair(), moco=MoCoConfig(queue_size=32), disco=DiscoConfig(images_per_sum=0))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_one_training_step_changes_only_what_the_method_trains(name, monkeypatch):
    monkeypatch.setattr(Method, "log_terms", lambda self, terms, batch_size: None)  # self.log needs a Trainer
    module = BUILDERS[name]()
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    loss = module.training_step(batch_for(module), 0)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    optimizer.step()
    after = module.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == CHANGED[name]  # never the teacher: frozen, BatchNorm statistics included
    trained_params = {n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad}
    own = {"simreg": {"predictor"}, "compress-1q": {"to_teacher"}}.get(name, set())
    assert trained_params == {"student", *own}
    if name in ("simreg", "compress-1q", "compress-2q"):  # on backbone features: the unused head is not trained
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("student.head."))


def test_bingo_with_momentum_keys_needs_no_teacher_and_enqueues_momentum_keys(monkeypatch):
    monkeypatch.setattr(Method, "log_terms", lambda self, terms, batch_size: None)
    module = BUILDERS["bingo-momentum-keys"]()
    assert module.teacher is None
    module.train()
    batch = batch_for(module)
    module.training_step(batch, 0)
    with torch.no_grad():
        # The anchors' key view through the updated momentum student, BatchNorm on the whole batch (one split).
        expected = module.key_encoder.encoder(batch[0][1])
    torch.testing.assert_close(module.queue.keys[:B], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("build,fix", [
    (lambda: Seed(**pair(wide_student(8)), seed=SeedConfig(queue_size=32)), "student.embed_dim=16"),
    (lambda: DisCo(**pair(wide_student(8)), moco=MoCoConfig(queue_size=32), disco=DiscoConfig()),
     "student.embed_dim=16"),
    (lambda: Bingo(**pair(), bingo=BingoConfig(keys="nope")), "'teacher' or 'momentum'"),
])
def test_mismatched_students_are_refused_with_the_fix(build, fix):
    with pytest.raises(UserError, match=fix):
        build()


@pytest.mark.parametrize("method,extra", [
    ("seed", []), ("compress-1q", []), ("compress-2q", []), ("disco", []), ("simreg", []),
    ("bingo", ["distill.bingo.keys=momentum"]),
])
def test_every_method_distils_from_the_command_line(chain, tmp_path, capsys, bingo_logger_guard, method, extra):
    from bingo.cli import main
    from conftest import read_json, tiny_sets

    out = tmp_path / method
    sets = tiny_sets("trainer.limit_train_batches=2", "trainer.loggers=[csv]", "distill.seed.queue_size=64",
                     "distill.compress.bank_size=64", *extra)
    args = ["distill", *sets,
            "--method", method, "--teacher", str(chain.teacher), "--bags", str(chain.bags), "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    result = read_json(out / "results.json")
    assert result["method"] == method and result["steps"] == 2 and math.isfinite(result["final_metrics"][
        "train/loss_epoch"])
    assert (out / "student.safetensors").is_file()
    columns = (out / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "train/lr", "train/images_per_s_step"} <= set(columns)
    # alignment with the teacher on the same view, wherever student and teacher share a space
    assert ("train/alignment_step" in columns) == (method in ("seed", "compress-1q", "disco", "simreg"))
    assert ("train/key_alignment_step" in columns) == (method in ("disco", "bingo"))  # bingo: momentum keys


def test_a_teacher_method_without_a_teacher_is_refused(tmp_path, capsys, bingo_logger_guard):
    from bingo.cli import main
    from conftest import tiny_sets

    assert main(["distill", *tiny_sets(), "--method", "seed", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("bingo: error: no teacher given")
    assert main(["distill", *tiny_sets(), "--method", "nope", "--out", str(tmp_path / "run")]) == 2
    assert "unknown method 'nope'; choose one of: moco, seed, compress-1q" in capsys.readouterr().err


def test_every_method_starts_from_the_same_student_for_a_seed(chain, monkeypatch):
    from bingo.stages import distill as distill_stage
    from conftest import tiny_config

    starts = {}

    class Stop(Exception):
        pass

    def capture(cfg, student, teacher, run_info):
        starts[cfg.distill.method] = {k: v.clone() for k, v in student.state_dict().items()}
        raise Stop

    monkeypatch.setattr(distill_stage, "build_method", capture)
    for method in ("moco", "seed", "bingo"):
        cfg = tiny_config(f"distill.method={method}", f"teacher.checkpoint={chain.teacher}", "seed=3")
        with pytest.raises(Stop):
            distill_stage.run_distill(cfg, chain.root / "unused")
    assert all(torch.equal(starts["moco"][k], starts[m][k]) for m in ("seed", "bingo") for k in starts["moco"])


def test_simreg_predictor_is_the_official_four_layers():
    module = SimReg(**pair(), simreg=SimRegConfig())
    layers = [m for m in module.predictor.modules() if isinstance(m, torch.nn.Linear | torch.nn.BatchNorm1d)]
    f, t = module.student.feature_dim, module.teacher.feature_dim
    shapes = [(m.in_features, m.out_features) if isinstance(m, torch.nn.Linear) else ("bn", m.num_features)
              for m in layers]
    assert shapes == [(f, 2 * f), ("bn", 2 * f), (2 * f, f), (f, 2 * f), ("bn", 2 * f), (2 * f, t)]
    assert len(SimReg(**pair(), simreg=SimRegConfig(predictor_layers=2, predictor_hidden=32)).predictor) == 4
    with pytest.raises(UserError, match="predictor_layers must be 4"):
        SimReg(**pair(), simreg=SimRegConfig(predictor_layers=3))


@pytest.mark.parametrize("banks", [1, 2])
def test_compress_distils_backbone_features(banks, monkeypatch):
    monkeypatch.setattr(Method, "log_terms", lambda self, terms, batch_size: None)  # self.log needs a Trainer
    module = Compress(**pair(), compress=CompressConfig(bank_size=32), banks=banks)
    module.train()
    module.training_step(([torch.randn(B, 3, 16, 16)], torch.zeros(B), torch.arange(B)), 0)
    bank = module.student_bank if banks == 2 else module.teacher_bank
    width = module.student.feature_dim if banks == 2 else module.teacher.feature_dim
    assert bank.keys.shape[1] == width  # 2q: the bare backbone's space; 1q: one Linear into the teacher's
    assert (module.to_teacher is None) == (banks == 2)


@pytest.mark.parametrize("method, weak", [(lambda c: SimReg(**pair(), simreg=SimRegConfig(weak_view=c)), "simreg"),
                                          (lambda c: Compress(**pair(), compress=CompressConfig(weak_view=c),
                                                              banks=2), "compress")])
def test_compress_and_simreg_see_one_weak_view_by_default(method, weak):
    from bingo.config import AugmentConfig

    augment = AugmentConfig(jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5, crop_min_scale=0.3)
    seen = method(True).views.augment(augment)
    assert (seen.jitter_prob, seen.grayscale_prob, seen.blur_prob) == (0.0, 0.0, 0.0)
    assert (seen.crop_min_scale, seen.flip) == (0.3, True)  # crop and flip stay
    assert method(False).views.augment(augment) == augment and method(True).views.count == 1
