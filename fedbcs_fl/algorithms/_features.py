"""The paper's UNet with its pixel features and bottleneck exposed, for the baselines.

"Pixel features" (baselines.md) are the last decoder block's output: ``f`` channels at
full resolution. The bottleneck is the decoder's ``center`` output (16f channels, stride
16). Both are recorded by forward hooks; ``model(x)`` still returns plain logits.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from fedbcs_models import UNet


class FeatureUNet(nn.Module):
    """A :class:`~fedbcs_models.UNet` (``self.unet``) that can also return its features.

    Args:
        unet: the network; its ``state_dict`` keys gain the prefix ``unet.``.

    Use ``logits, pixels, bottleneck = model.forward_with_features(x)`` with ``pixels``
    ``[B, f, H, W]`` and ``bottleneck`` ``[B, 16f, H/16, W/16]``.
    """

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet
        self.pixel_channels = unet.decoder.out_channels
        self.bottleneck_channels = 2 * unet.encoder.out_channels[-1]
        self._recorded: dict[str, torch.Tensor] | None = None
        unet.decoder.blocks[-1].register_forward_hook(functools.partial(self._record, "pixels"))
        unet.decoder.center.register_forward_hook(functools.partial(self._record, "bottleneck"))

    def _record(self, key: str, module, inputs, output):
        # A bound method, not a closure: copy.deepcopy re-binds it to the copy's self.
        if self._recorded is not None:
            self._recorded[key] = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)

    def forward_with_features(self, x: torch.Tensor):
        """``(logits, pixel features, bottleneck)``."""
        self._recorded = {}
        try:
            logits = self.unet(x)
            return logits, self._recorded["pixels"], self._recorded["bottleneck"]
        finally:
            self._recorded = None


def build_feature_unet(algorithm) -> FeatureUNet:
    """The run's UNet (no FSR, no CDPA) wrapped to expose features."""
    config = algorithm.config
    return FeatureUNet(
        UNet(algorithm.in_channels, algorithm.num_classes, init_features=config.init_features)
    )
