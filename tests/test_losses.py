"""The BINGO loss (arXiv 2107.01691, as its official code composes it) and InfoNCE against their formulas,
computed independently with loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bingo.methods.losses import bingo_loss, info_nce


def ce(z: torch.Tensor, y: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    """CE(z; y) = -log softmax([z·y, z·Q] / τ)[0], for one query, with explicit sums."""
    logits = [float(z @ y) / tau] + [float(z @ q) / tau for q in queue]
    top = max(logits)
    log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
    return log_sum - logits[0]


def mean_ce(zs: torch.Tensor, ys: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    return sum(ce(z, y, queue, tau) for z, y in zip(zs, ys, strict=True)) / len(zs)


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
                       dim=-1)


@pytest.fixture
def embeddings() -> dict[str, torch.Tensor]:
    batch, dim, queue = 4, 6, 7
    return {"za": unit(batch, dim, seed=1), "zp": unit(batch, dim, seed=2), "zm": unit(batch, dim, seed=3),
            "ya": unit(batch, dim, seed=4), "yp": unit(batch, dim, seed=5), "Q": unit(queue, dim, seed=6)}


def test_info_nce_matches_formula_for_each_query_and_positive(embeddings):
    e, tau = embeddings, 0.2
    keys = torch.stack([e["ya"], e["yp"]], dim=1)  # (B, 2, D)
    got = info_nce(e["za"], keys, e["Q"], tau)
    assert got.shape == (4, 2)
    for b in range(4):
        assert got[b, 0].item() == pytest.approx(ce(e["za"][b], e["ya"][b], e["Q"], tau), rel=1e-9)
        assert got[b, 1].item() == pytest.approx(ce(e["za"][b], e["yp"][b], e["Q"], tau), rel=1e-9)


def test_info_nce_hand_example():
    # z = y: positive logit 1/τ; one negative orthogonal: logit 0.  CE = log(1 + e^{-1/τ}).
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    q = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert info_nce(z, y, q, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-12)


@pytest.mark.parametrize("lam_self,lam_other,lam_mix", [(1.0, 0.0, 0.7), (0.5, 0.5, 0.25), (0.3, 0.9, 1.0)])
def test_bingo_loss_term_by_term(embeddings, lam_self, lam_other, lam_mix):
    e, tau = embeddings, 0.2
    terms = bingo_loss(e["za"], e["zp"], e["zm"], e["ya"], e["yp"], e["Q"], tau, lam_self, lam_other, lam_mix)
    ce_a_a, ce_a_p = mean_ce(e["za"], e["ya"], e["Q"], tau), mean_ce(e["za"], e["yp"], e["Q"], tau)
    ce_p_p, ce_p_a = mean_ce(e["zp"], e["yp"], e["Q"], tau), mean_ce(e["zp"], e["ya"], e["Q"], tau)
    ce_m_a, ce_m_p = mean_ce(e["zm"], e["ya"], e["Q"], tau), mean_ce(e["zm"], e["yp"], e["Q"], tau)
    l_anchor = lam_self * ce_a_a + lam_other * ce_a_p
    l_pos = lam_self * ce_p_p + lam_other * ce_p_a
    l_mix = lam_mix * ce_m_a + (1 - lam_mix) * ce_m_p
    assert terms["anchor"].item() == pytest.approx(l_anchor, rel=1e-9)
    assert terms["positive"].item() == pytest.approx(l_pos, rel=1e-9)
    assert terms["mix"].item() == pytest.approx(l_mix, rel=1e-9)
    assert terms["loss"].item() == pytest.approx((l_anchor + l_pos + l_mix) / 3, rel=1e-9)
    assert terms["intra"].item() == pytest.approx(ce_a_a, rel=1e-9)
    assert terms["inter"].item() == pytest.approx(ce_a_p, rel=1e-9)


def test_bingo_loss_symmetric_positive_uses_its_own_key_first(embeddings):
    # With λo = 0, L_pos must be CE(zp; yp), not CE(zp; ya).
    e, tau = embeddings, 0.3
    terms = bingo_loss(e["za"], e["zp"], None, e["ya"], e["yp"], e["Q"], tau, 1.0, 0.0, 1.0)
    assert terms["positive"].item() == pytest.approx(mean_ce(e["zp"], e["yp"], e["Q"], tau), rel=1e-9)
    assert terms["positive"].item() != pytest.approx(mean_ce(e["zp"], e["ya"], e["Q"], tau), rel=1e-6)


def test_bingo_loss_mean_of_present_terms_only(embeddings):
    e, tau = embeddings, 0.2
    only_anchor = bingo_loss(e["za"], None, None, e["ya"], e["yp"], e["Q"], tau, 0.5, 0.5, 0.4)
    assert set(only_anchor) == {"loss", "anchor", "intra", "inter"}
    expected = 0.5 * mean_ce(e["za"], e["ya"], e["Q"], tau) + 0.5 * mean_ce(e["za"], e["yp"], e["Q"], tau)
    assert only_anchor["loss"].item() == pytest.approx(expected, rel=1e-9)

    no_pos = bingo_loss(e["za"], None, e["zm"], e["ya"], e["yp"], e["Q"], tau, 0.5, 0.5, 0.4)
    assert "positive" not in no_pos
    l_mix = 0.4 * mean_ce(e["zm"], e["ya"], e["Q"], tau) + 0.6 * mean_ce(e["zm"], e["yp"], e["Q"], tau)
    assert no_pos["loss"].item() == pytest.approx((expected + l_mix) / 2, rel=1e-9)

    no_mix = bingo_loss(e["za"], e["zp"], None, e["ya"], e["yp"], e["Q"], tau, 0.5, 0.5, 0.4)
    assert "mix" not in no_mix
    l_pos = 0.5 * mean_ce(e["zp"], e["yp"], e["Q"], tau) + 0.5 * mean_ce(e["zp"], e["ya"], e["Q"], tau)
    assert no_mix["loss"].item() == pytest.approx((expected + l_pos) / 2, rel=1e-9)


def test_no_gradient_reaches_keys_or_queue(embeddings):
    e = {k: v.clone().requires_grad_(True) for k, v in embeddings.items()}
    terms = bingo_loss(e["za"], e["zp"], e["zm"], e["ya"].detach(), e["yp"].detach(), e["Q"], 0.2, 0.5, 0.5, 0.5)
    terms["loss"].backward()
    assert e["Q"].grad is None  # the queue is detached inside info_nce
    for name in ("za", "zp", "zm"):
        assert e[name].grad is not None and e[name].grad.abs().sum() > 0
    assert not terms["intra"].requires_grad and not terms["inter"].requires_grad


def test_losses_are_computed_in_float32_under_bf16_autocast():
    from bingo.methods.losses import compress_loss, cosine_regression, seed_loss, squared_error

    z, y, queue = unit(8, 32, seed=1).float(), unit(8, 32, seed=2).float(), unit(4096, 32, seed=3).float()
    z = (0.9 * y + 0.1 * z) / (0.9 * y + 0.1 * z).norm(dim=1, keepdim=True)  # queries close to their keys
    cases = {"info_nce": lambda: info_nce(z, y.unsqueeze(1), queue, 0.1),
             "seed": lambda: seed_loss(z, y, queue, 0.2, 1e-4),
             "compress": lambda: compress_loss(z, y, queue, queue, 0.04),
             "squared": lambda: squared_error(z, y), "cosine": lambda: cosine_regression(z, y)}
    for name, loss in cases.items():
        exact = loss()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss()
        assert mixed.dtype == torch.float32, name
        torch.testing.assert_close(mixed, exact, rtol=1e-5, atol=1e-5, msg=name)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the losses would be without full_precision
        rounded = info_nce.__wrapped__(z.bfloat16(), y.unsqueeze(1).bfloat16(), queue.bfloat16(), 0.1)
    assert (rounded.float() - cases["info_nce"]()).abs().max() > 1e-3
