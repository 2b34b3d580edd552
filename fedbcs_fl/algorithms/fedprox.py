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

from typing import ClassVar

import torch

from ..schema import NON_NEGATIVE, Option
from .base import Algorithm, LocalContext

ANCHOR_KEY = "fedprox/global_parameters"


def proximal_term(parameters, anchors) -> torch.Tensor:
    """``Σ ‖w − a‖²`` over matching parameter and anchor tensors (anchors detached)."""
    return sum(((w - a) ** 2).sum() for w, a in zip(parameters, anchors, strict=True))


class FedProx(Algorithm):
    name = "fedprox"
    options: ClassVar[dict[str, Option]] = {
        "mu": Option(
            0.01, "μ, weight of the proximal term μ/2 · ‖w − w_global‖²", interval=NON_NEGATIVE
        ),
    }

    def begin_local(self, model, ctx: LocalContext):
        ctx.scratch[ANCHOR_KEY] = [p.detach().clone() for p in model.parameters()]

    def training_loss(self, model, images, masks, ctx: LocalContext):
        proximal = 0.5 * self.opt["mu"] * proximal_term(model.parameters(), ctx.scratch[ANCHOR_KEY])
        ctx.log("fedprox/proximal", proximal)
        return self.segmentation_loss(model(images), masks) + proximal
