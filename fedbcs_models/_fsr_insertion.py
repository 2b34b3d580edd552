"""FSR after chosen encoder stages of the UNet or of any segmentation_models_pytorch model.

Encoder stage k is entry k of the encoder's feature list (entry 0 is the input itself).
A dry run finds the submodule that returns that tensor (the outermost one that created
it: ``layer2`` rather than its last block, not a later Identity that passes it on, the
in-place ReLU that completes it in a bare stem); a forward hook on it replaces its
output by ``FSR(output)``, so the recalibrated features feed both the deeper encoder
stages and the decoder's skip connection, as in the released UNet_FSR. Hooks rather
than wrapped modules keep every call signature working (EfficientNet blocks take a
drop-connect rate) and leave the existing state_dict keys unchanged; the FSR modules
live in ``model.encoder_fsr["stage{k}"]``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn

from fedbcs_ops import FSR

from ._discovery import dry_run, encoder_of


def fsr_stage_numbers(model: nn.Module) -> list[int]:
    """The encoder stages of ``model`` that FSR can follow: 1..depth, skipping empty ones."""
    channels = encoder_of(model).out_channels
    return [stage for stage in range(1, len(channels)) if channels[stage] > 0]


def _stage_producers(encoder: nn.Module, stages) -> dict[int, nn.Module]:
    finished = []  # (module, output, output version, whether the output was also an input)

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            received = any(value is output for value in inputs)
            finished.append((module, output, output._version, received))

    handles = [m.register_forward_hook(record) for m in encoder.modules() if m is not encoder]
    try:
        features = dry_run(encoder)
    finally:
        for handle in handles:
            handle.remove()
    producers = {}
    for stage in stages:
        feature = features[stage]
        # Only modules that returned the finished feature (its final version: an in-place
        # ReLU may complete it) count. Among them, the outermost creator is the last one
        # that did not receive it as input; modules that pass it on unchanged (Identity,
        # zero padding in the next stage) received it. With no enclosing creator (a stem
        # of bare layers), the in-place op that completed it.
        returned = [
            (m, received)
            for m, out, version, received in finished
            if out is feature and version == feature._version
        ]
        creators = [m for m, received in returned if not received]
        completers = [m for m, received in returned if received]
        if creators:
            producers[stage] = creators[-1]
        elif completers:
            producers[stage] = completers[0]
        else:
            raise ValueError(
                f"no submodule of {type(encoder).__name__} returns encoder stage {stage}; "
                "FSR insertion needs each stage output to come from a module"
            )
    return producers


def _recalibrate_output(fsr: FSR, module: nn.Module, inputs, output: torch.Tensor):
    return fsr(output)


def insert_fsr(model: nn.Module, stages: Iterable[int], gate: str = "static") -> nn.Module:
    """Put :class:`fedbcs_ops.FSR` after encoder stages ``stages`` of ``model``.

    Args:
        model: :class:`~fedbcs_models.UNet` or a segmentation_models_pytorch model (any
            encoder whose stage outputs come from submodules: resnet, efficientnet,
            ``tu-`` timm encoders, ...); changed in place.
        stages: iterable of stage numbers, 1-based entries of the encoder feature list:
            1–4 for the UNet (strides 1–8), 1–depth for smp (strides 2–32). The released
            FedBCS setting is ``(2, 3, 4)`` on the UNet.
        gate: FSR gate, ``"static"`` (default) or ``"adaptive"``.

    Returns:
        ``model``, with the new FSR modules in ``model.encoder_fsr["stage{k}"]``, channels
        taken from ``model.encoder.out_channels``.

    Raises:
        ValueError: a stage number outside the valid ones (listed in the message), or
            a stage that already has FSR.

    Example:
        >>> import segmentation_models_pytorch as smp
        >>> model = insert_fsr(smp.Unet("resnet18", encoder_weights=None), (2, 3, 4))
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
    """
    encoder = encoder_of(model)
    valid = fsr_stage_numbers(model)
    stages = sorted(set(stages))
    bad = [stage for stage in stages if stage not in valid]
    if bad or not stages:
        raise ValueError(
            f"stages must be a non-empty selection of {valid} for {type(model).__name__}, "
            f"got {bad or stages}"
        )
    if not hasattr(model, "encoder_fsr"):
        model.encoder_fsr = nn.ModuleDict()
    taken = [stage for stage in stages if f"stage{stage}" in model.encoder_fsr]
    if taken:
        raise ValueError(f"encoder stages {taken} already have FSR")
    parameter = next(model.parameters())
    for stage, producer in _stage_producers(encoder, stages).items():
        fsr = FSR(encoder.out_channels[stage], gate=gate)
        fsr.to(device=parameter.device, dtype=parameter.dtype)
        model.encoder_fsr[f"stage{stage}"] = fsr
        producer.register_forward_hook(functools.partial(_recalibrate_output, fsr))
    return model
