"""Learning a model's structure by running it once: input channels, shapes, producers."""

from __future__ import annotations

import torch
from torch import nn

DRY_RUN_SIZE = 64  # divisible by 32, the deepest stride of smp encoders


def encoder_of(model: nn.Module) -> nn.Module:
    """``model.encoder``, which must return a feature list and carry ``out_channels``."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module) or not hasattr(encoder, "out_channels"):
        raise TypeError(
            "model must have an `encoder` with `out_channels` (fedbcs_models.UNet or a "
            f"segmentation_models_pytorch model), got {type(model).__name__}"
        )
    return encoder


def input_channels(module: nn.Module) -> int:
    """The ``in_channels`` of the first Conv2d in ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return layer.in_channels
    raise TypeError(f"{type(module).__name__} holds no Conv2d; cannot tell its input channels")


def dry_run(module: nn.Module, input_size: int = DRY_RUN_SIZE, in_channels: int | None = None):
    """Run ``module`` once on a random ``[2, C, size, size]`` input without side effects.

    Eval mode (so no BatchNorm running statistics move) and no_grad; the training flags
    of all submodules are restored afterwards.
    """
    if in_channels is None:
        in_channels = input_channels(module)
    parameter = next(module.parameters())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, in_channels, input_size, input_size, generator=generator)
    x = x.to(device=parameter.device, dtype=parameter.dtype)
    training = {layer: layer.training for layer in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            return module(x)
    finally:
        for layer, flag in training.items():
            layer.training = flag
