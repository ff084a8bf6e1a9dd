"""Losses as small pure functions; shapes in the docstrings. B: batch, D: embedding, K: queue."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """BINGO's objective (method.md §1.2), term by term.

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
