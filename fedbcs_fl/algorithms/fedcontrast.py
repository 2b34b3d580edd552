"""FedContrast-GPA (Zhou and Zheng 2023), our reading of its paper: it has no public code.

Client loss: (CE + soft Dice) / 2 + λ_own·L_own + λ_others·L_others over every pixel
feature f (last decoder block):

- L_own, local contrast: InfoNCE of cos(f, p) / τ against the client's own prototypes
  from the previous round, positive the one of the pixel's class.
- L_others, global contrast: multi-positive InfoNCE of cos(f, p) / τ against the other
  clients' prototypes of the previous round, positives those of the pixel's class.

τ = 0.1; both via logsumexp, plain means over the pixels whose class has a positive.
Before a client has sent prototypes (round 1) both terms are 0.

Payload up: one prototype per class present (exact class mean over the last local epoch)
and ``steps`` = (local steps done, local steps scheduled). Server (global process-aware
aggregation): weights averaged with n_k · done_k / scheduled_k, normalised; every
client's prototypes go down unchanged (``protos``, ``labels``).

The simulator gives a client no id, so a client tells its own prototypes apart by
keeping the rows it sent in its persistent state: the rows of the global payload equal
to one of them are its own (they travel unchanged), the rest are the others'.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..aggregation import weighted_average
from ._protos import PixelPrototypeAlgorithm, cosine, pixel_rows, prototype_infonce


class FedContrast(PixelPrototypeAlgorithm):
    name = "fedcontrast"
    options: ClassVar[dict[str, Any]] = {
        "tau": 0.1,  # InfoNCE temperature of both terms
        "lambda_own": 1.0,  # weight of L_own (local contrast)
        "lambda_others": 1.0,  # weight of L_others (global contrast)
    }

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
        if "protos" in ctx.global_payload:
            rows, row_labels = ctx.global_payload["protos"], ctx.global_payload["labels"]
            others = ~(rows[:, None, :] == own[None, :, :]).all(-1).any(1)
            logits = cosine(pixels, rows[others].to(pixels.device)) / tau
            loss_others = prototype_infonce(logits, labels, row_labels[others])
            ctx.log("fedcontrast/others", loss_others)
            loss = loss + self.opt["lambda_others"] * loss_others
        return loss

    def end_local(self, model, ctx):
        payload = super().end_local(model, ctx)
        ctx.state["own_protos"], ctx.state["own_labels"] = payload["protos"], payload["labels"]
        payload["steps"] = torch.tensor([ctx.steps_done, ctx.steps_scheduled])
        return payload

    def aggregate_weights(self, updates, global_weights):
        progress = [
            u.num_examples * float(u.payload["steps"][0] / u.payload["steps"][1]) for u in updates
        ]
        return weighted_average([u.weights for u in updates], progress)

    def aggregate_prototypes(self, rows, labels):
        return {"protos": rows, "labels": labels}
