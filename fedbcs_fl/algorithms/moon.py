"""MOON (Li, He and Song 2021): model-contrastive learning on a projection of the bottleneck.

Model: the paper's UNet plus a projection head, a 2-layer MLP
(``16f → 16f → proj_dim``, ReLU between) on the globally average-pooled bottleneck. The
head is part of the model, so it is trained and aggregated with the rest.

Client loss, per image, averaged over the batch::

    L = (CE + soft Dice) / 2 + μ·CE([cos(z, z_glob), cos(z, z_prev)] / τ, target 0)

``z`` is the projection of the model being trained, ``z_glob`` that of the global model
(snapshotted in ``begin_local``) and ``z_prev`` that of the client's own model at the end
of its previous round (its weights kept in the client's persistent ``state``); both
frozen, evaluated under no_grad. The cross-entropy is taken in log space, so τ = 0.005
cannot overflow. A client with no previous model (its first round) uses the model it
starts from, the global one, as the previous model: the term is then the constant log 2,
with zero gradient.

Payload: none (weights, head included, both ways). Server: size-weighted FedAvg.

Options:
    mu: weight of the contrastive term (default 1).
    tau: temperature (default 0.5).
    proj_dim: output width of the projection head (default 256, as the MOON paper).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import multi_positive_infonce
from ._features import TappedUNet, build_tapped_unet
from .base import Algorithm, LocalContext
from .methods import METHODS

# The client's persistent state keeps its weights between rounds; the round's scratch
# holds the frozen models built from them and from the global weights.
PREVIOUS_WEIGHTS_KEY = "moon/previous_weights"
GLOBAL_KEY = "moon/global_model"
PREVIOUS_KEY = "moon/previous_model"


class ProjectedUNet(nn.Module):
    """A :class:`TappedUNet` (``self.backbone``) with MOON's projection head (``self.head``).

    ``model(x)`` returns logits; ``model.forward_with_projection(x)`` returns
    ``(logits, z)`` with ``z`` ``[B, proj_dim]``.
    """

    def __init__(self, backbone: TappedUNet, proj_dim: int):
        super().__init__()
        self.backbone = backbone
        width = backbone.taps.bottleneck_channels
        self.head = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_with_projection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tapped = self.backbone.taps.forward_with_levels(x)
        return tapped.output, self.head(tapped.bottleneck.mean(dim=(2, 3)))


def moon_contrastive_loss(
    z: torch.Tensor, z_global: torch.Tensor, z_previous: torch.Tensor, tau: float
) -> torch.Tensor:
    """Mean over rows of ``CE([cos(z, z_glob), cos(z, z_prev)] / τ, target 0)``."""
    logits = torch.stack(
        [F.cosine_similarity(z, z_global, dim=1), F.cosine_similarity(z, z_previous, dim=1)],
        dim=1,
    )
    positives = torch.zeros_like(logits, dtype=torch.bool)
    positives[:, 0] = True
    loss, _ = multi_positive_infonce(logits / tau, positives)
    return loss.mean()


def _frozen_copy(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


class MOON(Algorithm):
    name = "moon"
    options = METHODS[name].options

    def build_model(self):
        return ProjectedUNet(build_tapped_unet(self), int(self.opt["proj_dim"]))

    # ---- client side ----------------------------------------------------------------

    def begin_local(self, model, ctx: LocalContext):
        ctx.scratch[GLOBAL_KEY] = _frozen_copy(model)
        previous_weights = ctx.state.get(PREVIOUS_WEIGHTS_KEY)
        if previous_weights is not None:
            previous = _frozen_copy(model)
            previous.load_state_dict(previous_weights)
            ctx.scratch[PREVIOUS_KEY] = previous

    def training_loss(self, model, images, masks, ctx: LocalContext):
        logits, z = model.forward_with_projection(images)
        with torch.no_grad():
            _, z_global = ctx.scratch[GLOBAL_KEY].forward_with_projection(images)
            previous = ctx.scratch.get(PREVIOUS_KEY)
            z_previous = (
                z_global if previous is None else previous.forward_with_projection(images)[1]
            )
        contrastive = moon_contrastive_loss(z, z_global, z_previous, self.opt["tau"])
        ctx.log("moon/contrastive", contrastive)
        return self.segmentation_loss(logits, masks) + self.opt["mu"] * contrastive

    def end_local(self, model, ctx: LocalContext):
        ctx.state[PREVIOUS_WEIGHTS_KEY] = {
            k: v.detach().clone() for k, v in model.state_dict().items()
        }
        return {}
