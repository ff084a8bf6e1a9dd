"""Losses as small pure functions; shapes in the docstrings. B: batch, D: embedding, K: queue."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F


def full_precision(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`loss` computed with autocast off, its float16 / bfloat16 arguments cast to float32 (gradients flow back).

    Under bf16 autocast a cosine near 1 is rounded to steps of 2^-8; divided by τ = 0.1 (1e-4 for SEED's
    teacher) and compared over thousands of queue keys, that rounding swamps the differences the loss is
    made of. The matrix products here are small next to the networks'.
    """

    @functools.wraps(loss)
    def in_float32(*args: object, **kwargs: object) -> torch.Tensor:
        def up(value: object) -> object:
            low = isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16)
            return value.float() if low else value

        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return loss(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

    return in_float32


@full_precision
def info_nce(queries: torch.Tensor, positive_keys: torch.Tensor, negatives: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """InfoNCE of each query against each of its positives, all sharing the same negatives.

    CE(z; y) = -log softmax([z·y, z·Q] / τ)[0]

    Args:
        queries: (B, D) normalised student embeddings z.
        positive_keys: (B, P, D) normalised keys y, P positives per query (1 for MoCo, 2 for BINGO).
        negatives: (K, D) normalised queue Q; receives no gradient.
        temperature: τ, e.g. 0.2.
    Returns:
        (B, P) per-query, per-positive cross-entropy.
    """
    positive = torch.einsum("bd,bpd->bp", queries, positive_keys).unsqueeze(-1)  # (B, P, 1)
    negative = (queries @ negatives.detach().T).unsqueeze(1).expand(-1, positive.shape[1], -1)  # (B, P, K)
    logits = torch.cat([positive, negative], dim=2) / temperature  # (B, P, 1 + K)
    return -F.log_softmax(logits, dim=2)[..., 0]


def bingo_loss(anchor: torch.Tensor, positive: torch.Tensor | None, mixed: torch.Tensor | None,
               anchor_keys: torch.Tensor, positive_keys: torch.Tensor, negatives: torch.Tensor,
               temperature: float, lam_self: float, lam_other: float, lam_mix: float,
               ) -> dict[str, torch.Tensor]:
    """BINGO's objective (Xu et al., ICLR 2022, arXiv 2107.01691), term by term.

    The paper writes it as L_intra + L_inter (CE(za; ya) and CE(za; yp)); its official code
    (github.com/haohang96/bingo) adds the symmetric terms and the CutMix term, composed as below.

    L_anchor = λs·CE(za; ya) + λo·CE(za; yp)
    L_pos    = λs·CE(zp; yp) + λo·CE(zp; ya)          (when positive is given: the symmetric terms)
    L_mix    = λm·CE(zm; ya) + (1 - λm)·CE(zm; yp)    (when mixed is given: the CutMix term)
    L        = mean of the terms present

    Args:
        anchor, positive, mixed: (B, D) student embeddings za, zp, zm (positive, mixed may be None).
        anchor_keys, positive_keys: (B, D) teacher keys ya, yp.
        negatives: (K, D) the queue of teacher anchor keys.
        temperature: τ (0.2; 0.12 for EfficientNet students).
        lam_self, lam_other: (λs, λo): (1, 0) during warm-up, then (0.5, 0.5).
        lam_mix: λm, the share of the anchor's area that survived CutMix.
    Returns:
        {"loss", "anchor", "intra", "inter"} plus "positive" and "mix" when used; each a scalar.
        intra = CE(za; ya) and inter = CE(za; yp), unweighted, for monitoring.
    """
    keys = torch.stack([anchor_keys, positive_keys], dim=1)  # (B, 2, D): [ya, yp]
    ce_anchor = info_nce(anchor, keys, negatives, temperature).mean(0)  # (2,): CE(za;ya), CE(za;yp)
    terms = {"anchor": lam_self * ce_anchor[0] + lam_other * ce_anchor[1]}
    if positive is not None:
        ce_positive = info_nce(positive, keys, negatives, temperature).mean(0)  # CE(zp;ya), CE(zp;yp)
        terms["positive"] = lam_self * ce_positive[1] + lam_other * ce_positive[0]
    if mixed is not None:
        ce_mixed = info_nce(mixed, keys, negatives, temperature).mean(0)  # CE(zm;ya), CE(zm;yp)
        terms["mix"] = lam_mix * ce_mixed[0] + (1 - lam_mix) * ce_mixed[1]
    loss = torch.stack(list(terms.values())).mean()
    return {"loss": loss, **terms, "intra": ce_anchor[0].detach(), "inter": ce_anchor[1].detach()}


@full_precision
def seed_loss(student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, student_temperature: float,
              teacher_temperature: float) -> torch.Tensor:
    """SEED's soft cross-entropy between teacher and student similarity distributions.

    pT = softmax([t·t, t·Q] / τT),  log pS = log_softmax([s·t, s·Q] / τS),  L = -Σ pT · log pS

    Args:
        student: (B, D) normalised student embeddings s (receive gradient).
        teacher: (B, D) normalised teacher embeddings t of the same images (no gradient).
        queue: (K, D) normalised teacher embeddings of earlier batches Q (no gradient).
        student_temperature, teacher_temperature: τS (0.2), τT (1e-4).
    Returns:
        (B,) per-image loss.
    """
    teacher, queue = teacher.detach(), queue.detach()
    teacher_logits = torch.cat([(teacher * teacher).sum(1, keepdim=True), teacher @ queue.T], 1)  # (B, 1 + K)
    student_logits = torch.cat([(student * teacher).sum(1, keepdim=True), student @ queue.T], 1)  # (B, 1 + K)
    target = F.softmax(teacher_logits / teacher_temperature, dim=1)
    return -(target * F.log_softmax(student_logits / student_temperature, dim=1)).sum(1)


@full_precision
def compress_loss(student: torch.Tensor, teacher: torch.Tensor, student_bank: torch.Tensor,
                  teacher_bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """CompRess: KL(teacher's similarity distribution over its bank || student's over its bank).

    pT = softmax(BT·t / τ),  pS = softmax(BS·s / τ),  L = KL(pT || pS) = Σ pT (log pT - log pS)
    CompRess-2q: BS holds momentum-student embeddings of the images BT holds; CompRess-1q: BS = BT.

    Args:
        student: (B, Ds) normalised student embeddings s (receive gradient).
        teacher: (B, Dt) normalised teacher features t (no gradient).
        student_bank: (K, Ds) and teacher_bank: (K, Dt): the same K earlier images (no gradient).
        temperature: τ (0.04).
    Returns:
        (B,) per-image KL divergence.
    """
    teacher_log_p = F.log_softmax(teacher.detach() @ teacher_bank.detach().T / temperature, dim=1)  # (B, K)
    student_log_p = F.log_softmax(student @ student_bank.detach().T / temperature, dim=1)  # (B, K)
    return (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(1)


@full_precision
def squared_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """DisCo's distillation term per image: ||s_b - t_b||² (arXiv 2104.09124).

    Args:
        student: (B, D) normalised student embeddings (receive gradient).
        teacher: (B, D) normalised teacher embeddings of the same views (no gradient).
    Returns:
        (B,) squared errors.
    """
    return (student - teacher.detach()).pow(2).sum(1)


@full_precision
def cosine_regression(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimReg: 2 - 2·cos(prediction, target) per image.

    Args:
        prediction: (B, D) predictor outputs (receive gradient); normalised here.
        target: (B, D) teacher backbone features (no gradient); normalised here.
    Returns:
        (B,) per-image loss in [0, 4].
    """
    return 2 - 2 * F.cosine_similarity(prediction, target.detach(), dim=1)
