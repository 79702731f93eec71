"""Partial-label segmentation loss and the disagreement-head loss.

Tensors are ``[N, C, X, Y, Z]``. ``labelled`` is a boolean ``[N, C]``: which output channels the
scan's annotation actually covers (channel 0, background, always). As in MOSnet, a structure the
scan does not label must not be learnt as background: its predicted probability is merged into
the background's before the cross-entropy (the "marginal" form of MOSnet's alpha_i = 0 masking
that suits a softmax), and it is left out of the Dice term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the idiom every PyTorch reader knows)


def partial_label_loss(
    logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Marginal cross-entropy + soft Dice over labelled foreground channels.

    ``target`` holds soft class fractions (each voxel sums to <= 1), ``weight`` ``[N, 1, ...]`` is
    0 where the voxel is ignored.
    """
    logp = F.log_softmax(logits, dim=1)
    unl = ~labelled  # [N, C]
    # Background channel becomes log(p_bg + sum of unlabelled p); unlabelled targets move into it.
    merged_mask = unl.clone()
    merged_mask[:, 0] = True
    neg_inf = torch.finfo(logp.dtype).min
    merged = torch.logsumexp(torch.where(merged_mask[:, :, None, None, None], logp, neg_inf), dim=1)
    tgt = target * labelled[:, :, None, None, None]
    bg_target = target[:, 0] + (target * unl[:, :, None, None, None]).sum(dim=1)
    ce = -(bg_target * merged + (tgt[:, 1:] * logp[:, 1:]).sum(dim=1))
    ce = (ce * weight[:, 0]).sum() / weight.sum().clamp_min(1.0)

    prob = logp.exp() * weight
    dims = (2, 3, 4)
    inter = (prob[:, 1:] * tgt[:, 1:]).sum(dims)
    denom = prob[:, 1:].sum(dims) + tgt[:, 1:].sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)
    present = labelled[:, 1:] & (tgt[:, 1:].sum(dims) > 0.5)
    dice_loss = ((1 - dice) * present).sum() / present.sum().clamp_min(1)
    return ce + dice_loss


def disagreement_loss(logit: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """BCE against the fraction of the voxel where annotators disagree, plus a soft Dice so the
    thin disagreement bands are not drowned by the agreeing majority of voxels."""
    bce = F.binary_cross_entropy_with_logits(logit, fraction)
    p = torch.sigmoid(logit)
    dice = (2 * (p * fraction).sum() + 1.0) / (p.sum() + fraction.sum() + 1.0)
    return bce + 0.5 * (1 - dice)
