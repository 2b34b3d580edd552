"""FeatureTaps: forward hooks that collect the encoder and decoder levels of a model.

What is tapped, per architecture (levels are returned finest first):

==================  ==========================  ============================  ================
model               encoder levels              decoder levels                bottleneck
==================  ==========================  ============================  ================
UNet                ``encoder`` output[1:]:     ``decoder.blocks``: the four  ``decoder.center``
                    enc1–enc4, strides 1, 2,    up blocks, strides 1, 2, 4,   (16f, stride 16)
                    4, 8 (after FSR)            8
smp Unet            ``encoder`` output[1:],     ``decoder.blocks``, strides   ``decoder.center``
                    strides 2–32                1–16                          (stride 32)
smp UnetPlusPlus    same                        ``decoder.blocks["x_0_j"]``,  deepest encoder
                                                j = 0..depth (the top row),   level (stride 32)
                                                strides 1–16
smp FPN             same                        ``decoder.p5 .. p2``,         deepest encoder
                                                strides 32–4                  level (stride 32)
smp DeepLabV3Plus   same                        ``decoder.aspp`` (stride 16)  deepest encoder
                                                and ``decoder.block2``        level (stride 16)
                                                (stride 4)
==================  ==========================  ============================  ================

The bottleneck is the deepest feature map the decoder starts from: the output of the
decoder's ``center`` where its forward runs one (smp's UnetPlusPlus has a ``center`` it
never calls), else the encoder's deepest level itself. The encoder's feature list starts
with the input itself (smp convention), which is not a level; zero-channel entries
(transformer-style timm encoders) are skipped. Channel counts and strides come from one
dry run at construction.

Where :func:`~fedbcs_models.insert_fsr` put FSR after an encoder stage, the encoder level
is FSR's output (what the deeper stages and the skip connection see), and
``TappedForward.fsr`` also holds FSR's input and output per stage. The FSR modules are
looked up in ``model.encoder_fsr`` at every call, so FSR inserted after the taps were
built is tapped too.

The hooks exist only while :meth:`FeatureTaps.forward_with_levels` runs: they are
registered on entry and removed on exit, however the forward ends. Between calls the
model carries no hook of the taps, so ``model(x)``, ``copy.deepcopy`` and ``state_dict``
see the model exactly as without taps. A module that owns both the model and its taps
(:class:`~fedbcs_models.CDPAModel`) can be deep-copied: the copy's taps point at the
copy's model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ._discovery import DRY_RUN_SIZE, dry_run, encoder_of, input_channels
from ._unet import UNetDecoder


@dataclass(frozen=True)
class DecoderTaps:
    """Where the taps of one decoder type are.

    Args:
        levels: ``decoder → modules`` whose outputs are the decoder levels, in any order
            (they are returned finest first).
        bottleneck: ``decoder → module`` whose output is the bottleneck; None (default)
            when the decoder starts from the encoder's deepest level itself.
    """

    levels: Callable[[nn.Module], list[nn.Module]]
    bottleneck: Callable[[nn.Module], nn.Module] | None = None


def _qualified_name(cls: type) -> str:
    """A class's module and name, e.g. ``"fedbcs_models._unet.UNetDecoder"``: its key in
    :data:`DECODER_TAPS`."""
    return f"{cls.__module__}.{cls.__qualname__}"


_SMP = "segmentation_models_pytorch.decoders"
# Decoder types by qualified name, not by class: the table needs no import of smp (which
# takes seconds, through timm and torchvision), as a model with an smp decoder has
# imported smp itself.
DECODER_TAPS = {
    _qualified_name(UNetDecoder): DecoderTaps(
        lambda decoder: list(decoder.blocks), lambda decoder: decoder.center
    ),
    f"{_SMP}.unet.decoder.UnetDecoder": DecoderTaps(
        lambda decoder: list(decoder.blocks), lambda decoder: decoder.center
    ),
    f"{_SMP}.unetplusplus.decoder.UnetPlusPlusDecoder": DecoderTaps(
        lambda decoder: [decoder.blocks[f"x_0_{column}"] for column in range(decoder.depth + 1)]
    ),
    f"{_SMP}.fpn.decoder.FPNDecoder": DecoderTaps(
        lambda decoder: [decoder.p5, decoder.p4, decoder.p3, decoder.p2]
    ),
    f"{_SMP}.deeplabv3.decoder.DeepLabV3PlusDecoder": DecoderTaps(
        lambda decoder: [decoder.aspp, decoder.block2]
    ),
}


def _valid_decoders() -> str:
    return ", ".join(name.rpartition(".")[2] for name in DECODER_TAPS)


class TappedForward(NamedTuple):
    """What :meth:`FeatureTaps.forward_with_levels` returns."""

    output: torch.Tensor  # the model's own output: model(x)
    encoder: list[torch.Tensor]  # encoder levels, finest first
    decoder: list[torch.Tensor]  # decoder levels, finest first
    bottleneck: torch.Tensor  # the deepest feature map the decoder starts from
    # encoder stage k → (FSR's input, FSR's output) for each stage followed by FSR
    fsr: dict[int, tuple[torch.Tensor, torch.Tensor]]


def _finest_first(levels):
    return sorted(levels, key=lambda level: -level.shape[-2] * level.shape[-1])


def _append_output(outputs: list, module, inputs, output):
    """The forward hook of a tapped module, bound to its list by ``functools.partial``."""
    outputs.append(output)


def _append_input_and_output(pairs: list, module, inputs, output):
    """The forward hook of a tapped FSR module: its input and its output."""
    pairs.append((inputs[0], output))


def tappable_module(model: nn.Module) -> nn.Module:
    """The outermost module of ``model`` (``model`` itself first) that
    :class:`FeatureTaps` can tap: one with an ``encoder`` carrying ``out_channels`` and a
    ``decoder`` of a type in :data:`DECODER_TAPS`. Finds the network inside a wrapper
    (e.g. :class:`~fedbcs_models.CDPAModel`'s ``backbone``).

    Raises:
        TypeError: no such module; the message lists the decoder types that can be tapped.
    """
    for module in model.modules():
        encoder = getattr(module, "encoder", None)
        decoder = getattr(module, "decoder", None)
        if hasattr(encoder, "out_channels") and _qualified_name(type(decoder)) in DECODER_TAPS:
            return module
    raise TypeError(
        f"{type(model).__name__} holds no module with an encoder and a decoder FeatureTaps "
        f"can tap; valid decoders: {_valid_decoders()}"
    )


class FeatureTaps:
    """Collects a model's multi-level encoder and decoder features and its bottleneck.

    Args:
        model: :class:`~fedbcs_models.UNet` or an smp Unet, UnetPlusPlus, FPN or
            DeepLabV3Plus (the decoder types in ``DECODER_TAPS``; add a
            :class:`DecoderTaps` entry there, keyed ``"module.ClassName"``, for another
            decoder). The model is not
            changed: hooks are in place only inside :meth:`forward_with_levels`, so
            ``model(x)`` costs and returns as before.

    Attributes (from a dry run at construction, ``64×64`` input):
        encoder_channels, decoder_channels: channel counts of the levels, finest first.
        encoder_strides, decoder_strides: their strides relative to the input.
        encoder_stages: the encoder stage of each encoder level (its entry in the
            encoder's feature list, as :func:`~fedbcs_models.insert_fsr` numbers them).
        bottleneck_channels, bottleneck_stride: the same for the bottleneck.
        in_channels: the input channels the model expects.

    Example:
        >>> from fedbcs_models import UNet
        >>> taps = FeatureTaps(UNet(init_features=8))
        >>> taps.encoder_channels, taps.decoder_strides
        ([8, 16, 32, 64], [1, 2, 4, 8])
        >>> taps.bottleneck_channels, taps.bottleneck_stride
        (128, 16)
        >>> tapped = taps.forward_with_levels(torch.randn(2, 3, 64, 64))
        >>> tapped.decoder[0].shape, tapped.bottleneck.shape
        (torch.Size([2, 8, 64, 64]), torch.Size([2, 128, 4, 4]))
        >>> taps = FeatureTaps(UNet(init_features=8, fsr_stages=(2, 3)))
        >>> tapped = taps.forward_with_levels(torch.randn(2, 3, 64, 64))
        >>> before, after = tapped.fsr[2]
        >>> after is tapped.encoder[1], before.shape == after.shape
        (True, True)
    """

    def __init__(self, model: nn.Module):
        encoder = encoder_of(model)
        decoder = getattr(model, "decoder", None)
        taps = DECODER_TAPS.get(_qualified_name(type(decoder)))
        if taps is None:
            raise TypeError(
                f"FeatureTaps cannot tap a decoder of type {type(decoder).__name__}; valid: "
                f"{_valid_decoders()}"
            )
        self.model = model
        self.in_channels = input_channels(encoder)
        self.encoder_stages = [k for k, c in enumerate(encoder.out_channels) if k > 0 and c > 0]
        self._encoder = encoder
        self._decoder_modules = taps.levels(decoder)
        self._bottleneck_module = None if taps.bottleneck is None else taps.bottleneck(decoder)
        tapped = self._collect(lambda: dry_run(model, in_channels=self.in_channels))
        self.encoder_channels = [level.shape[1] for level in tapped.encoder]
        self.decoder_channels = [level.shape[1] for level in tapped.decoder]
        self.bottleneck_channels = tapped.bottleneck.shape[1]
        self.encoder_strides = [DRY_RUN_SIZE // level.shape[-1] for level in tapped.encoder]
        self.decoder_strides = [DRY_RUN_SIZE // level.shape[-1] for level in tapped.decoder]
        self.bottleneck_stride = DRY_RUN_SIZE // tapped.bottleneck.shape[-1]

    def forward_with_levels(
        self, x: torch.Tensor, through: nn.Module | None = None
    ) -> TappedForward:
        """``model(x)`` with its encoder and decoder levels (finest first), bottleneck and
        FSR inputs and outputs.

        Args:
            x: the input.
            through: a module that contains the tapped model and runs it (e.g. a wrapper
                that transforms ``x`` first); ``output`` is then ``through(x)``. Default:
                the tapped model itself.
        """
        run = self.model if through is None else through
        return self._collect(lambda: run(x))

    def _collect(self, run) -> TappedForward:
        encoder_outputs, decoder_levels, bottlenecks = [], [], []
        hooked = [(self._encoder, encoder_outputs)]
        hooked += [(module, decoder_levels) for module in self._decoder_modules]
        if self._bottleneck_module is not None:
            hooked.append((self._bottleneck_module, bottlenecks))
        fsr_modules = getattr(self.model, "encoder_fsr", {})
        fsr_pairs = {name: [] for name in fsr_modules}
        # Registered last, so they see each module's final output (after FSR's hooks).
        handles = [
            module.register_forward_hook(functools.partial(_append_output, outputs))
            for module, outputs in hooked
        ]
        handles += [
            module.register_forward_hook(
                functools.partial(_append_input_and_output, fsr_pairs[name])
            )
            for name, module in fsr_modules.items()
        ]
        try:
            output = run()
        finally:
            for handle in handles:
                handle.remove()
        expected = (1, len(self._decoder_modules), int(self._bottleneck_module is not None))
        expected += (1,) * len(fsr_pairs)
        recorded = (len(encoder_outputs), len(decoder_levels), len(bottlenecks))
        recorded += tuple(len(pairs) for pairs in fsr_pairs.values())
        if recorded != expected:
            raise RuntimeError(
                f"expected (encoder, decoder levels, bottleneck, each FSR) outputs {expected}, "
                f"recorded {recorded}: a tapped module ran more or less than once"
            )
        encoder_levels = [level for level in encoder_outputs[0][1:] if level.shape[1] > 0]
        bottleneck = bottlenecks[0] if bottlenecks else encoder_levels[-1]
        fsr = {int(name.removeprefix("stage")): pairs[0] for name, pairs in fsr_pairs.items()}
        return TappedForward(
            output,
            _finest_first(encoder_levels),
            _finest_first(decoder_levels),
            bottleneck,
            dict(sorted(fsr.items())),
        )
