"""What the pixel-prototype baselines (FedProto, FPL, FedContrast, FedPLVM) share.

:class:`PixelPrototypeAlgorithm` runs the tapped UNet, adds the method's prototype loss
on the pixel features (the last decoder block's output, baselines.md), and by default
sends the exact class means of those features over the last local epoch (under
prototype DP, over the pass after training, one image at a time): the present
classes' rows under ``protos`` and their class ids under ``labels``, as its ``uploads``
declare (``PIXEL_PROTOTYPES``, :mod:`fedbcs_fl.payload`).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from fedbcs_ops import class_sums, prototypes_from_sums

from ..aggregation import cluster_class_rows
from ..losses import multi_positive_infonce
from ..payload import PrototypeSet
from ..privacy import PrototypePrivacy, per_image_clipped_sums
from ._features import build_tapped_unet
from .base import Algorithm, ClientUpdate, LocalContext

# What every pixel-prototype baseline sends: its prototype rows and their class ids.
PIXEL_PROTOTYPES = PrototypeSet("protos", "labels")


def present_rows(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means [P, D] float32, class ids [P])`` on the CPU, for the classes counted.

    On the CPU because they travel, as the weights do (:func:`~fedbcs_fl.client.model_weights`).
    """
    means, present = prototypes_from_sums(sums, counts)
    return means[present].to("cpu", torch.float32), torch.nonzero(present)[:, 0].cpu()


def accumulate_class_sums(
    ctx: LocalContext, suffix: str, class_sums_of, labels: torch.Tensor, num_classes: int
) -> None:
    """Add a batch's class sums and counts under ``sums{suffix}`` / ``counts{suffix}``.

    ``class_sums_of(labels, num_classes) -> (sums, counts)`` is the method's pixel-level
    reduction. With prototype DP on, each image adds its clipped per-class means and at
    most 1 to a count instead (:func:`~fedbcs_fl.privacy.per_image_clipped_sums`).
    """
    if ctx.privacy is None:
        sums, counts = class_sums_of(labels, num_classes)
    else:
        sums, counts = per_image_clipped_sums(class_sums_of, labels, num_classes, ctx.privacy.clip)
    ctx.accumulate(f"sums{suffix}", sums)
    ctx.accumulate(f"counts{suffix}", counts)


def class_mean_payload(ctx: LocalContext, suffix: str = "") -> dict[str, torch.Tensor]:
    """``protos{suffix}`` / ``labels{suffix}`` from the sums accumulated under that suffix,
    through :func:`released_prototypes`; empty when nothing was accumulated."""
    if f"sums{suffix}" not in ctx.sums:
        return {}
    sums, counts = ctx.sums[f"sums{suffix}"], ctx.sums[f"counts{suffix}"]
    return released_prototypes(sums, counts, suffix, ctx.privacy, ctx.state)


def released_prototypes(
    sums: torch.Tensor,
    counts: torch.Tensor,
    suffix: str,
    privacy: PrototypePrivacy | None,
    state: dict,
) -> dict[str, torch.Tensor]:
    """``protos{suffix}`` / ``labels{suffix}`` of class ``sums`` and ``counts``; a class
    without pixels is not sent. Every prototype any method uploads is made here: with
    prototype DP on, the sums and counts get the site's noise first
    (:meth:`~fedbcs_fl.privacy.PrototypePrivacy.release`, counted in ``state``).
    """
    if privacy is not None:
        sums, counts = privacy.release(sums, counts, suffix, state)
    protos, labels = present_rows(sums, counts)
    return {f"protos{suffix}": protos, f"labels{suffix}": labels}


def pixel_rows(features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, D, H, W]`` features and ``[B, H, W]`` labels as ``([B·H·W, D], [B·H·W])``."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), masks.reshape(-1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N, M]`` cosine similarities of ``[N, D]`` rows with ``[M, D]`` rows (0 for zeros)."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    """Mean of a 1-D tensor, 0 (not NaN) when it is empty."""
    return values.sum() / max(values.numel(), 1)


def prototype_infonce(
    logits: torch.Tensor, labels: torch.Tensor, proto_labels: torch.Tensor
) -> torch.Tensor:
    """Mean multi-positive InfoNCE of ``[N, M]`` anchor logits, positives of the same class.

    Anchors whose class has no prototype are left out; 0 when none is left.
    """
    positives = labels[:, None] == proto_labels.to(labels.device)[None, :]
    loss, _ = multi_positive_infonce(logits, positives)
    return mean_or_zero(loss)


def class_mean_gap(
    pixels: torch.Tensor, labels: torch.Tensor, payload: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(‖f − mean_y‖² / D, y)`` of the pixels whose class has a global ``mean``."""
    keep = payload["mean_present"].to(labels.device)[labels]
    kept = labels[keep]
    gap = pixels[keep] - payload["mean"].to(pixels.device)[kept]
    return gap.pow(2).mean(1), kept


class PixelPrototypeAlgorithm(Algorithm):
    """FedAvg on the tapped UNet plus a prototype loss on the pixel features.

    Subclasses define :meth:`prototype_loss`. By default the client sends exact class
    means (:meth:`record_prototypes`, :meth:`end_local`) and the server clusters every
    client's rows per class (:meth:`aggregate_prototypes`).
    """

    uploads = (PIXEL_PROTOTYPES,)

    def prototype_dim(self, prototypes):
        return self.config.init_features  # the pixel features' width f (_features.py)

    def build_model(self):
        return build_tapped_unet(self)

    def training_loss(self, model, images, masks, ctx: LocalContext):
        tapped = model.taps.forward_with_levels(images)
        logits, features = tapped.output, tapped.decoder[0]
        if ctx.recording:
            with torch.no_grad():
                self.record_prototypes(features, masks, ctx)
        return self.segmentation_loss(logits, masks) + self.prototype_loss(features, masks, ctx)

    def prototype_loss(
        self, features: torch.Tensor, masks: torch.Tensor, ctx: LocalContext
    ) -> torch.Tensor | float:
        """The method's extra loss, its terms logged with ``ctx.log``; 0 without prototypes."""
        raise NotImplementedError

    def record_prototypes(self, features: torch.Tensor, masks: torch.Tensor, ctx: LocalContext):
        """Accumulate what the payload is built from, under no_grad: from the last local
        epoch's steps, or from the pass after training under prototype DP (:meth:`record_batch`)."""
        accumulate_class_sums(ctx, "", partial(class_sums, features), masks, self.num_classes)

    def record_batch(self, model, images, masks, ctx: LocalContext):
        self.record_prototypes(model.taps.forward_with_levels(images).decoder[0], masks, ctx)

    def end_local(self, model, ctx: LocalContext):
        return class_mean_payload(ctx)

    def aggregate_payload(self, updates: list[ClientUpdate], global_payload):
        sent = [u.payload for u in updates if "protos" in u.payload]
        if not sent:
            return {}
        rows = torch.cat([p["protos"] for p in sent])
        return self.aggregate_prototypes(rows, torch.cat([p["labels"] for p in sent]))

    def aggregate_prototypes(
        self, rows: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The payload down from every client's prototype ``rows`` and class ``labels``.

        Default: FINCH cluster prototypes per class and their mean (FPL, FedPLVM).
        """
        return cluster_class_rows(rows, labels, self.num_classes)
