"""Loss terms shared by FedBCS and the baselines.

Every contrastive term goes through :func:`multi_positive_infonce`, which works in log
space (logsumexp), so temperatures as small as 0.005 cannot overflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 − soft Dice of the softmax over classes, averaged over the foreground classes.

    Args:
        logits: ``[B, K, H, W]``.
        masks: ``[B, H, W]`` int64 class ids.
        eps: smoothing added to numerator and denominator (default 1e-5).
    """
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[1:].mean() if logits.shape[1] > 1 else 1 - dice.mean()


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(CE + soft Dice) / 2, the segmentation loss of every method, as the released code."""
    return 0.5 * (F.cross_entropy(logits, masks) + soft_dice_loss(logits, masks))


def multi_positive_infonce(
    logits: torch.Tensor, positives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor ``−log(Σ_pos e^{s} / Σ_all e^{s})`` (paper eq. 15), in log space.

    Args:
        logits: ``[A, M]`` similarities already divided by the temperature.
        positives: ``[A, M]`` bool, which of the M prototypes are positives per anchor.

    Returns:
        ``(loss [A'], valid [A])``: the loss of the anchors that have at least one positive
        (anchors without one are excluded, never NaN) and which anchors those are.
    """
    valid = positives.any(dim=1)
    logits = logits[valid]
    pos = logits.masked_fill(~positives[valid], float("-inf"))
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(pos, dim=1), valid


def resize_labels(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-resample ``[B, H, W]`` integer labels to ``size``."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
