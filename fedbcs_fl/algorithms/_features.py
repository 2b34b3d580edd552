"""The paper's UNet with its :class:`~fedbcs_models.FeatureTaps`, for the baselines.

"Pixel features" (baselines.md) are the last decoder block's output: ``f`` channels at
full resolution, the finest decoder level of the taps (``tapped.decoder[0]``). The
bottleneck is the decoder's ``center`` output (16f channels, stride 16,
``tapped.bottleneck``).
"""

from __future__ import annotations

import torch
from torch import nn

from fedbcs_models import FeatureTaps, UNet


class TappedUNet(nn.Module):
    """A :class:`~fedbcs_models.UNet` (``self.unet``) and its taps (``self.taps``).

    Args:
        unet: the network; its ``state_dict`` keys gain the prefix ``unet.``. The UNet
            stays under that name so that the keys, and with them the checkpoints and
            saved models of earlier runs, stay as they were.

    ``model(x)`` returns the logits; ``tapped = model.taps.forward_with_levels(x)`` also
    gives the pixel features ``tapped.decoder[0]`` ``[B, f, H, W]`` and the bottleneck
    ``tapped.bottleneck`` ``[B, 16f, H/16, W/16]``. A deep copy taps its own UNet.
    """

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet
        self.taps = FeatureTaps(unet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)


def build_tapped_unet(algorithm) -> TappedUNet:
    """The run's UNet (no FSR, no CDPA) with its taps."""
    config = algorithm.config
    return TappedUNet(
        UNet(algorithm.in_channels, algorithm.num_classes, init_features=config.init_features)
    )
