"""FedProto (Tan et al. 2022), for per-pixel segmentation.

Client loss: (CE + soft Dice) / 2 + λ·L_proto, with

    L_proto = mean over classes c in the batch of mean over pixels of class c of
              ‖f − P_c‖² / D,

f the pixel features (last decoder block, D channels) and P_c the global prototype of
class c. The class-balanced mean keeps the background, most of the pixels, from
outweighing the foreground. Classes without a global prototype are left out; in round 1
there are none and L_proto = 0.

Payload up: one prototype per class present, the exact class mean of the pixel features
over the last local epoch (under prototype DP, over the pass after training). Server:
size-weighted FedAvg of the weights; per class, the unweighted mean of the clients'
prototypes (``mean`` [K, D] and ``mean_present`` [K]).
"""

from __future__ import annotations

import torch

from fedbcs_ops import prototypes_from_sums

from ._protos import PixelPrototypeAlgorithm, class_mean_gap, mean_or_zero, pixel_rows
from .methods import METHODS


def class_balanced_mean(values: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """Mean over the classes in ``labels`` of the mean of ``values`` within each class."""
    sums = values.new_zeros(num_classes).index_add(0, labels, values)
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0
    return mean_or_zero(sums[present] / counts[present])


class FedProto(PixelPrototypeAlgorithm):
    name = "fedproto"
    options = METHODS[name].options

    def prototype_loss(self, features, masks, ctx):
        if "mean" not in ctx.global_payload:
            return 0.0
        gap, labels = class_mean_gap(*pixel_rows(features, masks), ctx.global_payload)
        proto = class_balanced_mean(gap, labels, self.num_classes)
        ctx.log("fedproto/proto", proto)
        return self.opt["lambda_proto"] * proto

    def aggregate_prototypes(self, rows, labels):
        sums = torch.zeros(self.num_classes, rows.shape[1], dtype=torch.float64)
        sums.index_add_(0, labels, rows.to(torch.float64))
        counts = torch.bincount(labels, minlength=self.num_classes).to(torch.float64)
        mean, present = prototypes_from_sums(sums, counts)
        return {"mean": mean.to(rows.dtype), "mean_present": present}
