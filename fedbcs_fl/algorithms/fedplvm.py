"""FedPLVM (Wang et al. 2024), for per-pixel segmentation.

Client loss: (CE + soft Dice) / 2 + λ·(L_α + L_corr) over every pixel feature f (last
decoder block) of a class the server has prototypes for:

- L_α, α-sparsity prototype loss: multi-positive InfoNCE of s_j^α / τ against all global
  cluster prototypes g_j, positives those of the pixel's class, with
  s_j = cos(f, g_j) clamped to [ε, 1] (ε = 1e-6) so that the power is defined.
- L_corr, intra-class correction: 2·mean (1 − cos(f, ḡ_y))², ḡ_y the mean of the global
  cluster prototypes of the pixel's class.

α = 0.25, τ = 0.07, λ = 100: the released code's defaults. In round 1 both terms are 0.

Payload up (dual-level clustering, first level): for every image of the last local
epoch and every class in it, the mean pixel feature of that class in that image; per
class, FINCH (cosine, last partition) over those vectors; their cluster means go up
(``protos``, ``labels``), a variable number per class. As in the released code, the
features come from a pass of the trained model after local training (``prototype_pass``
``after-training``): over the batches of the last local epoch, kept for it, so the pass
neither reads the data again nor moves the loader's shuffling. ``last-epoch`` takes the
features of the training steps themselves, as every other prototype method here.
With prototype DP on (docs/privacy.md) the image means come from the private pass over
every training image, one at a time, whatever ``prototype_pass`` says, and the first level
is replaced by one noisy mean per class of the clipped image means: FINCH over private
data has no bounded sensitivity.
Server (second level): size-weighted FedAvg of the weights; per class, FINCH again over
all clients' cluster prototypes; down go the global cluster prototypes (``protos``,
``labels``) and their per-class mean (``mean``, ``mean_present``).
"""

from __future__ import annotations

import torch

from fedbcs_ops import class_sums

from ..aggregation import cluster_class_rows
from ..privacy import clipped_class_sums
from ._protos import (
    PixelPrototypeAlgorithm,
    class_mean_payload,
    cosine,
    mean_or_zero,
    pixel_rows,
    present_rows,
    prototype_infonce,
)
from .methods import METHODS

COS_EPS = 1e-6  # lower clamp of the cosines raised to α: s^α has an infinite slope at 0
# The round's scratch: (means, class ids) of every image of the pass it takes them from, and
# that epoch's batches (images, labels) for the pass after training.
IMAGE_MEANS_KEY = "fedplvm/image_means"
BATCHES_KEY = "fedplvm/batches"


def image_class_means(features: torch.Tensor, masks: torch.Tensor, num_classes: int):
    """Masked average pooling per image and class: ``(means [P, D], class ids [P])``.

    Stacks the images vertically and gives image b's class c the label b·K + c, so one
    :func:`class_sums` call yields every (image, class) sum; absent pairs are dropped.
    """
    b, d, h, w = features.shape
    stacked = features.transpose(0, 1).reshape(1, d, b * h, w)
    offsets = torch.arange(b, device=masks.device).view(b, 1, 1) * num_classes
    labels = (masks + offsets).reshape(1, b * h, w)
    means, ids = present_rows(*class_sums(stacked, labels, b * num_classes))
    return means, ids % num_classes


class FedPLVM(PixelPrototypeAlgorithm):
    name = "fedplvm"
    options = METHODS[name].options

    def begin_local(self, model, ctx):
        ctx.scratch[IMAGE_MEANS_KEY] = []
        ctx.scratch[BATCHES_KEY] = []

    def training_loss(self, model, images, masks, ctx):
        if ctx.recording and self.opt["prototype_pass"] == "after-training":
            ctx.scratch[BATCHES_KEY].append((images, masks))
        return super().training_loss(model, images, masks, ctx)

    def record_prototypes(self, features, masks, ctx):
        """From the training steps: only with ``prototype_pass`` ``last-epoch``."""
        if self.opt["prototype_pass"] == "last-epoch":
            self.record_image_means(features, masks, ctx)

    def record_batch(self, model, images, masks, ctx):
        self.record_image_means(model.taps.forward_with_levels(images).decoder[0], masks, ctx)

    def record_image_means(self, features, masks, ctx):
        """Keep the batch's per-image class means for the first-level clustering."""
        ctx.scratch[IMAGE_MEANS_KEY].append(image_class_means(features, masks, self.num_classes))

    def end_local(self, model, ctx):
        if self.opt["prototype_pass"] == "after-training":
            # The last epoch's batches at the trained weights (none kept under prototype
            # DP, whose own pass has recorded the means already).
            self.prototype_pass(model, ctx.scratch[BATCHES_KEY], ctx)
        means, labels = (
            torch.cat(parts) for parts in zip(*ctx.scratch[IMAGE_MEANS_KEY], strict=True)
        )
        if ctx.privacy is not None:
            # The first-level clustering has no bounded sensitivity: with prototype DP a
            # site sends one noisy mean per class of its clipped image means instead.
            sums, counts = clipped_class_sums(means, labels, self.num_classes, ctx.privacy.clip)
            ctx.accumulate("sums", sums)
            ctx.accumulate("counts", counts)
            return class_mean_payload(ctx)
        local = cluster_class_rows(means, labels, self.num_classes)
        return {"protos": local["protos"], "labels": local["labels"]}

    def prototype_loss(self, features, masks, ctx):
        payload = ctx.global_payload
        if "protos" not in payload:
            return 0.0
        pixels, labels = pixel_rows(features, masks)
        protos = payload["protos"].to(pixels.device)
        sparse = cosine(pixels, protos).clamp(COS_EPS, 1.0) ** self.opt["alpha_sparsity"]
        loss_alpha = prototype_infonce(sparse / self.opt["tau"], labels, payload["labels"])
        keep = payload["mean_present"].to(labels.device)[labels]
        to_mean = cosine(pixels, payload["mean"].to(pixels.device)).gather(1, labels[:, None])
        loss_corr = 2 * mean_or_zero((1 - to_mean[keep, 0]) ** 2)
        ctx.log("fedplvm/alpha", loss_alpha)
        ctx.log("fedplvm/corr", loss_corr)
        return self.opt["lambda_plvm"] * (loss_alpha + loss_corr)
