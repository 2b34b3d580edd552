"""FeatureTaps: forward hooks that collect the encoder and decoder levels of a model.

What is tapped, per architecture (levels are returned finest first):

==================  =====================================  ===================================
model               encoder levels                         decoder levels
==================  =====================================  ===================================
UNet                ``encoder`` output[1:]: enc1–enc4,      ``decoder.blocks``: the four up
                    strides 1, 2, 4, 8 (after FSR)          blocks, strides 1, 2, 4, 8
smp Unet            ``encoder`` output[1:], strides 2–32    ``decoder.blocks``, strides 1–16
smp UnetPlusPlus    same                                    ``decoder.blocks["x_0_j"]``,
                                                            j = 0..depth (the top row),
                                                            strides 1–16
smp FPN             same                                    ``decoder.p5 .. p2``, strides 32–4
smp DeepLabV3Plus   same                                    ``decoder.aspp`` (stride 16) and
                                                            ``decoder.block2`` (stride 4)
==================  =====================================  ===================================

The encoder's feature list starts with the input itself (smp convention), which is not
a level; zero-channel entries (transformer-style timm encoders) are skipped. Channel
counts and strides come from one dry run at construction.
"""

from __future__ import annotations

from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from segmentation_models_pytorch.decoders.unetplusplus.decoder import UnetPlusPlusDecoder
from torch import nn

from ._discovery import DRY_RUN_SIZE, dry_run, encoder_of, input_channels
from ._unet import UNetDecoder

DECODER_TAPS = {
    UNetDecoder: lambda decoder: list(decoder.blocks),
    UnetDecoder: lambda decoder: list(decoder.blocks),
    UnetPlusPlusDecoder: lambda decoder: [
        decoder.blocks[f"x_0_{column}"] for column in range(decoder.depth + 1)
    ],
    FPNDecoder: lambda decoder: [decoder.p5, decoder.p4, decoder.p3, decoder.p2],
    DeepLabV3PlusDecoder: lambda decoder: [decoder.aspp, decoder.block2],
}


def _finest_first(levels):
    return sorted(levels, key=lambda level: -level.shape[-2] * level.shape[-1])


class FeatureTaps:
    """Collects a model's multi-level encoder and decoder features through forward hooks.

    Args:
        model: :class:`~fedbcs_models.UNet` or an smp Unet, UnetPlusPlus, FPN or
            DeepLabV3Plus (the decoder types in ``DECODER_TAPS``; add an entry there for
            another decoder). The model's own forward is untouched: the hooks record only
            inside :meth:`forward_with_levels`, so ``model(x)`` costs and returns as before.

    Attributes (from a dry run at construction, ``64×64`` input):
        encoder_channels, decoder_channels: channel counts of the levels, finest first.
        encoder_strides, decoder_strides: their strides relative to the input.
        in_channels: the input channels the model expects.

    Example:
        >>> from fedbcs_models import UNet
        >>> taps = FeatureTaps(UNet(init_features=8))
        >>> taps.encoder_channels, taps.decoder_strides
        ([8, 16, 32, 64], [1, 2, 4, 8])
    """

    def __init__(self, model: nn.Module):
        encoder = encoder_of(model)
        decoder = getattr(model, "decoder", None)
        taps = DECODER_TAPS.get(type(decoder))
        if taps is None:
            valid = ", ".join(kind.__name__ for kind in DECODER_TAPS)
            raise TypeError(
                f"FeatureTaps cannot tap a decoder of type {type(decoder).__name__}; valid: {valid}"
            )
        self.model = model
        self.in_channels = input_channels(encoder)
        self._recording = False
        self._encoder_levels = []
        self._decoder_levels = []
        encoder.register_forward_hook(self._record_encoder)
        self._decoder_modules = taps(decoder)
        for module in self._decoder_modules:
            module.register_forward_hook(self._record_decoder)
        _, encoder_levels, decoder_levels = self._collect(
            lambda: dry_run(model, in_channels=self.in_channels)
        )
        self.encoder_channels = [level.shape[1] for level in encoder_levels]
        self.decoder_channels = [level.shape[1] for level in decoder_levels]
        self.encoder_strides = [DRY_RUN_SIZE // level.shape[-1] for level in encoder_levels]
        self.decoder_strides = [DRY_RUN_SIZE // level.shape[-1] for level in decoder_levels]

    def _record_encoder(self, module, inputs, features):
        if self._recording:
            self._encoder_levels = [level for level in features[1:] if level.shape[1] > 0]

    def _record_decoder(self, module, inputs, output):
        if self._recording:
            self._decoder_levels.append(output)

    def forward_with_levels(self, x):
        """``(model(x), encoder_levels, decoder_levels)``, the levels finest first."""
        return self._collect(lambda: self.model(x))

    def _collect(self, run):
        self._recording = True
        try:
            output = run()
            encoder_levels, decoder_levels = self._encoder_levels, self._decoder_levels
        finally:
            self._recording = False
            self._encoder_levels, self._decoder_levels = [], []
        if len(decoder_levels) != len(self._decoder_modules):
            raise RuntimeError(
                f"expected {len(self._decoder_modules)} decoder levels, recorded "
                f"{len(decoder_levels)}: a tapped module ran more or less than once"
            )
        return output, _finest_first(encoder_levels), _finest_first(decoder_levels)
