"""FedProx (Li et al. 2020): FedAvg plus a proximal term towards the round's global weights.

Client loss::

    L = (CE + soft Dice) / 2 + (μ/2)·Σ_w ‖w − w_global‖²

over the trainable parameters, with ``w_global`` snapshotted in ``begin_local`` (a detached
copy: no gradient flows into it). Payload: none (weights only, both ways). Server:
size-weighted FedAvg.

Options:
    mu: weight of the proximal term (default 0.01).
"""

from __future__ import annotations

import torch

from .base import Algorithm, LocalContext
from .methods import METHODS

ANCHOR_KEY = "fedprox/global_parameters"


def proximal_term(parameters, anchors) -> torch.Tensor:
    """``Σ ‖w − a‖²`` over matching parameter and anchor tensors (anchors detached)."""
    return sum(((w - a) ** 2).sum() for w, a in zip(parameters, anchors, strict=True))


class FedProx(Algorithm):
    name = "fedprox"
    options = METHODS[name].options

    def begin_local(self, model, ctx: LocalContext):
        ctx.scratch[ANCHOR_KEY] = [p.detach().clone() for p in model.parameters()]

    def training_loss(self, model, images, masks, ctx: LocalContext):
        proximal = 0.5 * self.opt["mu"] * proximal_term(model.parameters(), ctx.scratch[ANCHOR_KEY])
        ctx.log("fedprox/proximal", proximal)
        return self.segmentation_loss(model(images), masks) + proximal
