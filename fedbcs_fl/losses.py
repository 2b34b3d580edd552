"""Loss terms shared by FedBCS and the baselines.

Contrastive terms go through :func:`multi_positive_infonce`, which works in log space
(logsumexp), so temperatures as small as 0.005 cannot overflow. FedBCS by default uses
:func:`capped_multi_positive_infonce` instead, the released code's form, which caps the
exponentials (docs/fidelity.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import DICE_LOSS_CLASSES

# The released ``compute_L_contra``: logits capped at 20, exponentials at 1e6, and 1e-9
# added to both sums. At τ = 0.005 every cosine above log(1e6)·τ ≈ 0.069 saturates.
RELEASED_LOGIT_CAP = 20.0
RELEASED_EXP_CAP = 1e6
RELEASED_SUM_EPS = 1e-9


def check_dice_loss_classes(classes: str) -> None:
    """Raise ``ValueError`` naming the valid values when ``classes`` is not one of them."""
    if classes not in DICE_LOSS_CLASSES:
        valid = ", ".join(DICE_LOSS_CLASSES)
        raise ValueError(f"dice_loss_classes must be one of {valid}; got {classes!r}")


def soft_dice_loss(
    logits: torch.Tensor, masks: torch.Tensor, classes: str = "all", eps: float = 1e-5
) -> torch.Tensor:
    """1 − soft Dice of the softmax over classes, averaged over ``classes``.

    Per class k, with sums over the whole batch:
    ``(2·Σ p_k y_k + eps) / (Σ p_k + Σ y_k + eps)``.

    Args:
        logits: ``[B, K, H, W]``.
        masks: ``[B, H, W]`` int64 class ids.
        classes: ``"all"`` (default, the released ``DiceLoss``: background included) or
            ``"foreground"`` (classes 1..K−1; all of them when K = 1).
        eps: smoothing added to numerator and denominator (default 1e-5, as released).
    """
    check_dice_loss_classes(classes)
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(masks, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    if classes == "foreground" and logits.shape[1] > 1:
        dice = dice[1:]
    return 1 - dice.mean()


def segmentation_loss(
    logits: torch.Tensor, masks: torch.Tensor, dice_classes: str = "all"
) -> torch.Tensor:
    """(CE + soft Dice) / 2, the segmentation loss of every method, as the released
    ``JointLoss``; ``dice_classes`` as in :func:`soft_dice_loss`."""
    return 0.5 * (F.cross_entropy(logits, masks) + soft_dice_loss(logits, masks, dice_classes))


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


def capped_multi_positive_infonce(
    logits: torch.Tensor, positives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 15 as the released ``compute_L_contra`` computes it, caps included.

    ``e = min(exp(min(s, 20)), 1e6)``, loss ``−log((Σ_pos e + 1e-9) / (Σ_all e + 1e-9))``.
    Where nothing is capped this equals :func:`multi_positive_infonce` (the 1e-9 aside).
    Where every similarity is capped (at τ = 0.005: every cosine above ≈ 0.069) each
    anchor's loss is log(M / P), M prototypes of which P positive, and its gradient is 0.

    Args and returns as :func:`multi_positive_infonce`.
    """
    valid = positives.any(dim=1)
    capped = logits[valid].clamp(max=RELEASED_LOGIT_CAP).exp().clamp(max=RELEASED_EXP_CAP)
    pos = (capped * positives[valid]).sum(dim=1) + RELEASED_SUM_EPS
    return -torch.log(pos / (capped.sum(dim=1) + RELEASED_SUM_EPS)), valid


def resize_labels(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-resample ``[B, H, W]`` integer labels to ``size``."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
