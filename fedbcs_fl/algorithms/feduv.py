"""FedUV (Son et al. 2024): variance of the predictions and uniformity of the features.

Client loss, per batch, with ``p = softmax(logits)`` over C classes::

    L = (CE + soft Dice) / 2
        + λ_var · mean_c ReLU(γ − sqrt(Var_pixels(p_c) + 1e-4)),   γ = 1/√C
        + λ_uni · mean_{i<j} exp(−‖z_i − z_j‖² / σ)

The variance is over every pixel of the batch (population variance, so one pixel is
finite); the 1e-4 keeps the square root's gradient finite for a constant prediction.
``z`` are the pixel features (the last decoder block, ``[B·H·W, f]``), of which at most
``uniformity_samples`` are drawn without replacement by a generator seeded from the run's
seed (its state kept in the client's persistent state, so a resumed run draws the same).
``σ`` is the median of their pairwise squared distances, detached (so the term is
scale-free and its gradient only moves the features).

Payload: none (weights only, both ways). Server: size-weighted FedAvg.

Options:
    lambda_variance: weight of the variance term (default 2.5).
    lambda_uniformity: weight of the uniformity term (default 0.5).
    uniformity_samples: most pixel features in the uniformity term (default 2048).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ._features import build_tapped_unet
from .base import Algorithm, LocalContext

# The sampling generator lives in the round's scratch; the client's persistent state keeps
# its state (a tensor) from one finished round to the next.
GENERATOR_KEY = "feduv/generator"
GENERATOR_STATE_KEY = "feduv/generator_state"


def variance_term(logits: torch.Tensor) -> torch.Tensor:
    """``mean_c ReLU(1/√C − sqrt(Var_pixels(softmax_c) + 1e-4))`` of ``[B, C, H, W]`` logits."""
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1).transpose(0, 1).reshape(num_classes, -1)
    std = torch.sqrt(probs.var(dim=1, correction=0) + 1e-4)
    return torch.relu(1 / math.sqrt(num_classes) - std).mean()


def uniformity_term(features: torch.Tensor) -> torch.Tensor:
    """``mean_{i<j} exp(−‖z_i − z_j‖² / σ)`` of ``[N, D]`` features, σ the median of the
    pairwise squared distances (detached); 0 for fewer than two features."""
    if features.shape[0] < 2:
        return features.new_zeros(())
    sq_norm = (features**2).sum(1)
    sq_dist = (sq_norm[:, None] + sq_norm[None, :] - 2 * features @ features.T).clamp_min(0)
    rows, cols = torch.triu_indices(*sq_dist.shape, offset=1, device=features.device)
    pairs = sq_dist[rows, cols]
    sigma = pairs.detach().median().clamp_min(torch.finfo(pairs.dtype).tiny)
    return torch.exp(-pairs / sigma).mean()


class FedUV(Algorithm):
    name = "feduv"
    options: ClassVar[dict[str, Any]] = {
        "lambda_variance": 2.5,  # weight of the prediction-variance hinge
        "lambda_uniformity": 0.5,  # weight of the feature-uniformity term
        "uniformity_samples": 2048,  # most pixel features in the uniformity term
    }

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
        features = pixels.permute(0, 2, 3, 1).reshape(-1, pixels.shape[1])
        count = min(int(self.opt["uniformity_samples"]), features.shape[0])
        chosen = torch.randperm(features.shape[0], generator=ctx.scratch[GENERATOR_KEY])[:count]
        variance = variance_term(logits)
        uniformity = uniformity_term(features[chosen.to(features.device)])
        ctx.log("feduv/variance", variance)
        ctx.log("feduv/uniformity", uniformity)
        return (
            self.segmentation_loss(logits, masks)
            + self.opt["lambda_variance"] * variance
            + self.opt["lambda_uniformity"] * uniformity
        )

    def end_local(self, model, ctx: LocalContext):
        ctx.state[GENERATOR_STATE_KEY] = ctx.scratch[GENERATOR_KEY].get_state()
        return {}
