"""FPL, federated prototype learning (Huang et al. 2023), for per-pixel segmentation.

Client loss: (CE + soft Dice) / 2 + L_infonce + L_mse, over every pixel feature f (last
decoder block, D channels) of a class the server has prototypes for:

- L_infonce: multi-positive InfoNCE of cos(f, p_j) / τ against all cluster prototypes
  p_j, positives those of the pixel's class (τ = 0.02), via logsumexp.
- L_mse: MSE(f, U_y) = ‖f − U_y‖² / D, U_y the unbiased prototype of the pixel's class.

Both are plain means over those pixels, as the original averages over samples. The
similarities form a [B·H·W, M] matrix with M the number of cluster prototypes (a few per
class), so every pixel is used, without sampling. In round 1 both terms are 0.

Payload up: one prototype per class present (exact class mean over the last local
epoch). Server: size-weighted FedAvg of the weights; per class, FINCH (cosine, last
partition) over the clients' prototypes; down go the cluster means (``protos``,
``labels``) and U_c, the mean of class c's cluster means (``mean``, ``mean_present``).
"""

from __future__ import annotations

from ._protos import (
    PixelPrototypeAlgorithm,
    class_mean_gap,
    cosine,
    mean_or_zero,
    pixel_rows,
    prototype_infonce,
)
from .methods import METHODS


class FPL(PixelPrototypeAlgorithm):
    name = "fpl"
    options = METHODS[name].options

    def prototype_loss(self, features, masks, ctx):
        payload = ctx.global_payload
        if "protos" not in payload:
            return 0.0
        pixels, labels = pixel_rows(features, masks)
        protos = payload["protos"].to(pixels.device)
        infonce = prototype_infonce(
            cosine(pixels, protos) / self.opt["tau"], labels, payload["labels"]
        )
        mse = mean_or_zero(class_mean_gap(pixels, labels, payload)[0])
        ctx.log("fpl/infonce", infonce)
        ctx.log("fpl/mse", mse)
        return infonce + mse
