"""FedUV (Son et al. 2024): variance of the predictions and uniformity of the features.

Client loss, per batch, with ``p = softmax(logits)`` over C classes and ``y`` the one-hot
labels::

    L = (CE + soft Dice) / 2
        + λ_var · mean_c ReLU(γ_c − s(p_c)),   s(v) = sqrt(Var_pixels(v) + 1e-4)
        + λ_uni · mean_{i<j} exp(−‖z_i − z_j‖² / σ)

``γ_c`` is the spread that perfectly confident predictions reach on the batch: FedUV's
classification target ``1/√C`` is the (unbiased) standard deviation of one-hot
predictions over C samples, one per class; for segmentation it is
``s(y_c) = sqrt(q_c(1 − q_c) + 1e-4)``, ``q_c`` the batch's fraction of class-c pixels
(``variance_target`` ``labels``). ``balanced`` keeps ``1/√C``, which a probability's
standard deviation (at most 0.5) never reaches for C = 2, so that hinge never switches
off. Variances are over every pixel of the batch
(population variance, so one pixel is finite); the 1e-4, on both sides, keeps the square
root's gradient finite for a constant prediction.

``z`` are, with ``uniformity_level`` ``image`` (default), one representation per image,
as the original has one per sample: the image's mean pixel feature (the last decoder
block, ``[B, f]``). ``pixel`` takes the pixel features themselves (``[B·H·W, f]``, this
project before: it pushes every pixel's feature away from every other's, against the
class clustering a segmentation needs), of which at most ``uniformity_samples`` are
drawn without replacement by a generator seeded from the run's seed (its state kept in
the client's persistent state, so a resumed run draws the same).
``σ`` is, as in the released code, the median of the non-zero pairwise squared distances,
with its gradient (``uniformity_sigma`` ``released``); ``detached`` takes the median of
all of them, zeros included, without gradient (this project before issue 14).

Payload: none (weights only, both ways). Server: size-weighted FedAvg.

Options:
    lambda_variance: weight of the variance term (default 2.5).
    lambda_uniformity: weight of the uniformity term (default 0.5).
    uniformity_level: ``image`` (default) or ``pixel``, as above.
    uniformity_samples: most pixel features in the uniformity term (default 2048).
    variance_target: ``labels`` (default) or ``balanced``, as above.
    uniformity_sigma: ``released`` (default) or ``detached``, as above.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._features import build_tapped_unet
from .base import Algorithm, LocalContext
from .methods import METHODS

# The sampling generator lives in the round's scratch; the client's persistent state keeps
# its state (a tensor) from one finished round to the next.
GENERATOR_KEY = "feduv/generator"
GENERATOR_STATE_KEY = "feduv/generator_state"
VARIANCE_EPS = 1e-4  # inside the square roots of the spreads


def _spread(values: torch.Tensor) -> torch.Tensor:
    """``sqrt(Var + 1e-4)`` of each row of ``[C, N]`` values (population variance)."""
    return torch.sqrt(values.var(dim=1, correction=0) + VARIANCE_EPS)


def variance_term(logits: torch.Tensor, masks: torch.Tensor, target: str) -> torch.Tensor:
    """``mean_c ReLU(γ_c − s(softmax_c))`` of ``[B, C, H, W]`` logits and ``[B, H, W]`` labels.

    ``target`` ``labels``: ``γ_c = s(one-hot labels of class c)``, what a perfect prediction
    reaches; ``balanced``: ``γ = 1/√C``.
    """
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1).transpose(0, 1).reshape(num_classes, -1)
    if target == "labels":
        gamma = _spread(F.one_hot(masks.reshape(-1), num_classes).T.to(probs.dtype))
    else:
        gamma = 1 / math.sqrt(num_classes)
    return torch.relu(gamma - _spread(probs)).mean()


def uniformity_term(features: torch.Tensor, sigma: str) -> torch.Tensor:
    """``mean_{i<j} exp(−‖z_i − z_j‖² / σ)`` of ``[N, D]`` features; 0 for fewer than two.

    ``sigma`` ``released``: σ is the median of the non-zero squared distances, with its
    gradient; ``detached``: the median of all of them, without.
    """
    if features.shape[0] < 2:
        return features.new_zeros(())
    # Differences, not the Gram matrix: identical features give exactly 0.
    pairs = torch.pdist(features).square()
    if sigma == "released":
        nonzero = pairs[pairs > 0]
        scale = nonzero.median() if nonzero.numel() else pairs.new_ones(())
    else:
        scale = pairs.detach().median().clamp_min(torch.finfo(pairs.dtype).tiny)
    return torch.exp(-pairs / scale).mean()


class FedUV(Algorithm):
    name = "feduv"
    options = METHODS[name].options

    def build_model(self):
        return build_tapped_unet(self)

    def begin_local(self, model, ctx: LocalContext):
        generator = torch.Generator()
        if GENERATOR_STATE_KEY in ctx.state:
            generator.set_state(ctx.state[GENERATOR_STATE_KEY])
        else:
            generator.manual_seed(self.config.seed)
        ctx.scratch[GENERATOR_KEY] = generator

    def training_loss(self, model, images, masks, ctx: LocalContext):
        tapped = model.taps.forward_with_levels(images)
        logits, pixels = tapped.output, tapped.decoder[0]
        variance = variance_term(logits, masks, self.opt["variance_target"])
        uniformity = uniformity_term(
            self.uniformity_points(pixels, ctx), self.opt["uniformity_sigma"]
        )
        ctx.log("feduv/variance", variance)
        ctx.log("feduv/uniformity", uniformity)
        return (
            self.segmentation_loss(logits, masks)
            + self.opt["lambda_variance"] * variance
            + self.opt["lambda_uniformity"] * uniformity
        )

    def uniformity_points(self, pixels: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        """The ``[N, f]`` features the uniformity term spreads, of ``[B, f, H, W]`` pixel
        features: per image their mean, or a sample of the pixels (``uniformity_level``)."""
        if self.opt["uniformity_level"] == "image":
            return pixels.mean(dim=(2, 3))
        features = pixels.permute(0, 2, 3, 1).reshape(-1, pixels.shape[1])
        count = min(int(self.opt["uniformity_samples"]), features.shape[0])
        chosen = torch.randperm(features.shape[0], generator=ctx.scratch[GENERATOR_KEY])[:count]
        return features[chosen.to(features.device)]

    def end_local(self, model, ctx: LocalContext):
        ctx.state[GENERATOR_STATE_KEY] = ctx.scratch[GENERATOR_KEY].get_state()
        return {}
