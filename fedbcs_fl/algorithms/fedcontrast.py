"""FedContrast-GPA (Zhou and Zheng 2023), our reading of its paper: it has no public code.

Client loss: (CE + soft Dice) / 2 + λ_own·L_own + λ_others·L_others over every pixel
feature f (last decoder block):

- L_own, local contrast: InfoNCE of cos(f, p) / τ against the client's own prototypes
  from the previous round, positive the one of the pixel's class.
- L_others, global contrast: multi-positive InfoNCE of cos(f, p) / τ against the other
  clients' prototypes of the previous round, positives those of the pixel's class.

τ = 0.1; both via logsumexp, plain means over the pixels whose class has a positive.
Before a client has sent prototypes (round 1) both terms are 0.

Payload up: one prototype per class present (exact class mean over the last local epoch;
under prototype DP over the pass after training), ``steps`` = (local steps done, local
steps scheduled), and ``owner``, the client's id.
Server (global process-aware aggregation): weights averaged with n_k · done_k /
scheduled_k, normalised (screening rejects a ``steps`` that is not 0 < done ≤ scheduled);
every client's prototypes go down unchanged (``protos``, ``labels``) with the id of the
client that sent each row (``owners``).

The engines give an algorithm no client identity, so a client draws its id once, at
random (63 bits: two clients of a federation share one with probability ~K²/2⁶⁴), and
keeps it in its persistent state. The id only tells rows apart; it enters no number, so
runs stay reproducible. Rows of another client that equal this one's, or rows changed by
a lossy transport, are still told apart correctly.
"""

from __future__ import annotations

import secrets

import torch

from ..aggregation import weighted_average
from ..payload import ClientId, StepCounts
from ._protos import (
    PIXEL_PROTOTYPES,
    PixelPrototypeAlgorithm,
    cosine,
    pixel_rows,
    prototype_infonce,
)
from .methods import METHODS

OWNER_KEY = "fedcontrast/owner"  # the client's id, in its persistent state


def others_mask(payload: dict[str, torch.Tensor], owner: int, own: torch.Tensor) -> torch.Tensor:
    """Which rows of the global ``payload`` came from other clients than ``owner``.

    A payload without ``owners`` was aggregated before owner ids existed (a run resumed
    from such a checkpoint): its own rows are found as before, equal to ``own``.
    """
    if "owners" in payload:
        return payload["owners"] != owner
    return ~(payload["protos"][:, None, :] == own[None, :, :]).all(-1).any(1)


class FedContrast(PixelPrototypeAlgorithm):
    name = "fedcontrast"
    options = METHODS[name].options
    uploads = (PIXEL_PROTOTYPES, StepCounts("steps"), ClientId("owner"))

    def begin_local(self, model, ctx):
        if OWNER_KEY not in ctx.state:
            ctx.state[OWNER_KEY] = secrets.randbits(63)

    def prototype_loss(self, features, masks, ctx):
        if "own_protos" not in ctx.state:
            return 0.0
        pixels, labels = pixel_rows(features, masks)
        own, own_labels = ctx.state["own_protos"], ctx.state["own_labels"]
        tau = self.opt["tau"]
        loss_own = prototype_infonce(
            cosine(pixels, own.to(pixels.device)) / tau, labels, own_labels
        )
        ctx.log("fedcontrast/own", loss_own)
        loss = self.opt["lambda_own"] * loss_own
        payload = ctx.global_payload
        if "protos" in payload:
            others = others_mask(payload, ctx.state[OWNER_KEY], own)
            logits = cosine(pixels, payload["protos"][others].to(pixels.device)) / tau
            loss_others = prototype_infonce(logits, labels, payload["labels"][others])
            ctx.log("fedcontrast/others", loss_others)
            loss = loss + self.opt["lambda_others"] * loss_others
        return loss

    def end_local(self, model, ctx):
        payload = super().end_local(model, ctx)
        ctx.state["own_protos"], ctx.state["own_labels"] = payload["protos"], payload["labels"]
        payload["steps"] = torch.tensor([ctx.steps_done, ctx.steps_scheduled])
        payload["owner"] = torch.tensor([ctx.state[OWNER_KEY]])
        return payload

    def aggregate_weights(self, updates, global_weights):
        progress = [
            u.num_examples * float(u.payload["steps"][0] / u.payload["steps"][1]) for u in updates
        ]
        return weighted_average([u.weights for u in updates], progress)

    def aggregate_payload(self, updates, global_payload):
        sent = [u.payload for u in updates if "protos" in u.payload]
        if not sent:
            return {}
        return {
            "protos": torch.cat([p["protos"] for p in sent]),
            "labels": torch.cat([p["labels"] for p in sent]),
            "owners": torch.cat([p["owner"].expand(len(p["labels"])) for p in sent]),
        }
