"""Segmentation metrics: foreground Dice (the paper's metric), HD95 and ASSD, via MONAI.

Each is computed per image and averaged over the images of a split. Dice is defined on
every image (an image with an empty mask and an empty prediction scores 1). HD95 and
ASSD are undefined when the mask or the prediction is empty; those images are left
out of the mean and counted in ``empty_pred``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F


def _onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def segmentation_metrics(preds: torch.Tensor, masks: torch.Tensor, num_classes: int = 2):
    """``{"dice", "hd95", "assd", "empty_pred"}`` over ``[N, H, W]`` predictions and masks.

    Dice is the mean foreground Dice in [0, 1]; distances are in pixels.
    """
    # MONAI takes seconds to import: only code that scores predictions pays for it.
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
    )

    y_pred, y = _onehot(preds, num_classes), _onehot(masks, num_classes)
    dice = compute_dice(y_pred, y, include_background=False, ignore_empty=False)
    both_empty = (y_pred[:, 1:].sum((2, 3)) == 0) & (y[:, 1:].sum((2, 3)) == 0)
    dice = torch.where(both_empty, torch.ones_like(dice), dice)
    defined = (y_pred[:, 1:].sum((2, 3)) > 0) & (y[:, 1:].sum((2, 3)) > 0)
    out = {"dice": float(dice.mean()), "empty_pred": int((~defined).all(1).sum())}
    if defined.any():
        keep = defined.all(1)
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about one of its own internal arguments on every call.
            warnings.simplefilter("ignore", FutureWarning)
            hd95 = compute_hausdorff_distance(y_pred[keep], y[keep], percentile=95)
            assd = compute_average_surface_distance(y_pred[keep], y[keep], symmetric=True)
        out["hd95"] = float(hd95.mean())
        out["assd"] = float(assd.mean())
    else:
        out["hd95"] = out["assd"] = math.nan
    return out
