"""Segmentation metrics for any number of classes: Dice (the paper's metric), HD95 and
ASSD per foreground class, and their mean over the foreground classes, via MONAI.

Each is computed per image and class and averaged over the images of a split. Dice is
defined on every image (a class absent from both the mask and the prediction scores 1).
HD95 and ASSD of a class are undefined on an image where the mask or the prediction lacks
the class; those images are left out of that class's mean, and a class undefined on every
image is left out of the mean over classes (NaN when every class is). ``empty_pred``
counts the images left out of every class's distances.

With two classes (background and foreground) the means are the foreground's figures.

HD95 and ASSD cost far more than Dice (MONAI finds every mask's edges): a run computes them
only on some rounds (``--surface-metrics-every``), and then asks for them with
``distances``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

DISTANCES = ("hd95", "assd")
METRICS = ("dice", *DISTANCES)


def class_key(metric: str, class_id: int) -> str:
    """The key of one class's figure in :func:`segmentation_metrics`, e.g. ``"dice/2"``."""
    return f"{metric}/{class_id}"


def _onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def _mean_defined(values: list[float]) -> float:
    """The mean of the values that are not NaN; NaN when none is."""
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def metric_names(distances: bool = True) -> tuple[str, ...]:
    """The metrics :func:`segmentation_metrics` gives: Dice, and HD95 and ASSD with
    ``distances``."""
    return METRICS if distances else ("dice",)


def segmentation_metrics(
    preds: torch.Tensor, masks: torch.Tensor, num_classes: int, distances: bool = True
) -> dict[str, float]:
    """Dice, HD95 and ASSD of ``[N, H, W]`` class-id predictions against masks.

    Args:
        preds: predicted class ids, int64 ``[N, H, W]``.
        masks: true class ids, int64 ``[N, H, W]``, each in [0, ``num_classes``).
        num_classes: K, background (0) included; the foreground classes are 1 … K−1.
        distances: also HD95 and ASSD (default); without, their keys are left out.

    Returns:
        Per foreground class c and metric m of :func:`metric_names`, ``"m/c"``
        (:func:`class_key`), and ``"m"``, the mean over the foreground classes; and
        ``"empty_pred"``. Dice is in [0, 1], distances in pixels.
    """
    # MONAI takes seconds to import: only code that scores predictions pays for it.
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
    )

    y_pred, y = _onehot(preds, num_classes), _onehot(masks, num_classes)
    dice = compute_dice(y_pred, y, include_background=False, ignore_empty=False)
    predicted, present = y_pred[:, 1:].sum((2, 3)) > 0, y[:, 1:].sum((2, 3)) > 0
    dice = torch.where(~predicted & ~present, torch.ones_like(dice), dice)
    defined = predicted & present  # [N, K-1]: where a class's distances are defined
    out: dict[str, float] = {}
    for c in range(1, num_classes):
        out[class_key("dice", c)] = float(dice[:, c - 1].mean())
        if not distances:
            continue
        keep = defined[:, c - 1]
        if not keep.any():
            out[class_key("hd95", c)] = out[class_key("assd", c)] = math.nan
            continue
        one_pred, one_true = y_pred[keep, c : c + 1], y[keep, c : c + 1]
        with warnings.catch_warnings():
            # MONAI 1.5+ warns about one of its own internal arguments on every call.
            warnings.simplefilter("ignore", FutureWarning)
            hd95 = compute_hausdorff_distance(
                one_pred, one_true, include_background=True, percentile=95
            )
            assd = compute_average_surface_distance(
                one_pred, one_true, include_background=True, symmetric=True
            )
        out[class_key("hd95", c)] = float(hd95.mean())
        out[class_key("assd", c)] = float(assd.mean())
    for metric in metric_names(distances):
        out[metric] = _mean_defined([out[class_key(metric, c)] for c in range(1, num_classes)])
    out["empty_pred"] = int((~defined).all(1).sum())
    return out


def per_class(metrics: dict[str, float], metric: str) -> dict[str, float]:
    """``{class id: figure}`` of one metric from :func:`segmentation_metrics`' result
    (class ids as strings, as JSON keys them)."""
    prefix = f"{metric}/"
    return {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}
