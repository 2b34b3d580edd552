"""HarmoFL (Jiang, Wang and Dou 2022): amplitude normalisation and weight perturbation.

Three differences from FedAvg, no extra loss term:

1. Model: an :class:`AmplitudeNormalization` layer before the UNet. It takes the 2-D FFT
   of each image channel, replaces the low-frequency amplitude (the centred
   ``(2b+1)×(2b+1)`` square of the shifted spectrum, ``b = ⌊ratio·size⌋``) by a running
   mean held in a buffer, keeps the phase, and inverts the FFT. The released code calls
   it with ``L = 0`` (ratio 0, our default): only the DC amplitude is swapped, which sets
   each channel's mean intensity to the running one and keeps everything else. In
   training the buffer tracks the mean amplitude of the client's batches (exponential
   moving average, set from the first batch). The buffer is part of the weights.
2. Client optimiser step (SAM-like weight perturbation): the gradient ``g`` at ``w``, a
   step to ``w + α·g/‖g‖`` (one norm over all parameters), the gradient there, back to
   ``w``, and the run's optimiser step with that gradient.
3. Server: equal-weight mean of the weights (not size-weighted). The amplitude buffer is
   averaged once, in the first round, and then frozen: the server keeps it and clients
   stop tracking it. That flag is the global payload ``harmofl/amplitude_frozen`` (so a
   run restored from its weights and payload resumes correctly).

Payload: up, none (the buffer travels inside the weights); down, the frozen flag.

Options:
    alpha: radius of the weight perturbation (default 0.05).
    amplitude_ratio: half-side of the low-frequency square over the image side
        (default 0: the DC amplitude only, as the released code's ``L=0``; 0.1 swaps a
        7×7 square at 32², 13×13 at 64², 77×77 at 384²).
    amplitude_momentum: momentum of the buffer's moving average (default 0.1).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..aggregation import weighted_average
from .base import Algorithm, ClientUpdate, LocalContext
from .methods import METHODS

FROZEN_KEY = "harmofl/amplitude_frozen"
AMPLITUDE_KEY = "amplitude_norm.running_amplitude"
SPATIAL = (-2, -1)


def _low_frequency_box(images: torch.Tensor, half: int) -> tuple[slice, slice]:
    """Rows and columns of the centred ``(2·half+1)²`` square of a shifted spectrum."""
    rows, cols = images.shape[-2] // 2, images.shape[-1] // 2
    return slice(rows - half, rows + half + 1), slice(cols - half, cols + half + 1)


def low_frequency_amplitude(images: torch.Tensor, half: int) -> torch.Tensor:
    """The centred ``[..., 2·half+1, 2·half+1]`` square of the images' shifted amplitude."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(images), dim=SPATIAL)
    rows, cols = _low_frequency_box(images, half)
    return spectrum.abs()[..., rows, cols]


def swap_low_frequency_amplitude(images: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
    """``images`` ``[B, C, H, W]`` with the centred square of their shifted amplitude
    spectrum replaced by ``amplitude`` ``[C, 2b+1, 2b+1]``; phase kept."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(images), dim=SPATIAL)
    rows, cols = _low_frequency_box(images, (amplitude.shape[-1] - 1) // 2)
    magnitude = spectrum.abs()
    magnitude[..., rows, cols] = amplitude
    swapped = torch.polar(magnitude, spectrum.angle())
    # The square is symmetric about frequency 0 and so is the mean amplitude, so the
    # spectrum stays Hermitian: the imaginary part is rounding error.
    return torch.fft.ifft2(torch.fft.ifftshift(swapped, dim=SPATIAL)).real


class AmplitudeNormalization(nn.Module):
    """HarmoFL's input layer: low-frequency amplitude swapped for a running mean.

    Args:
        channels: image channels.
        image_size: image side; inputs must be ``image_size × image_size``.
        ratio: half-side of the low-frequency square over the image side.
        momentum: weight of the new batch in the moving average.

    ``tracking`` (True by default) says whether training batches update the buffer.
    """

    def __init__(self, channels: int, image_size: int, ratio: float, momentum: float):
        super().__init__()
        if not 0 <= ratio < 0.5:
            raise ValueError(f"amplitude_ratio must be in [0, 0.5), got {ratio}")
        self.image_size = image_size
        self.half = int(image_size * ratio)
        self.momentum = momentum
        self.tracking = True
        side = 2 * self.half + 1
        self.register_buffer("running_amplitude", torch.zeros(channels, side, side))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"HarmoFL's amplitude layer was built for {self.image_size}² images, "
                f"got {tuple(x.shape[-2:])}; set image_size in the run configuration"
            )
        if self.training and self.tracking:
            self._track(low_frequency_amplitude(x, self.half).mean(0))
        return swap_low_frequency_amplitude(x, self.running_amplitude)

    @torch.no_grad()
    def _track(self, amplitude: torch.Tensor) -> None:
        # An image amplitude spectrum has a positive DC term, so an all-zero buffer has
        # never tracked a batch: start from this one instead of decaying from zero.
        if self.running_amplitude.any():
            self.running_amplitude.lerp_(amplitude, self.momentum)
        else:
            self.running_amplitude.copy_(amplitude)


class HarmonizedUNet(nn.Module):
    """``unet(amplitude_norm(x))``: the run's UNet behind the amplitude normalisation."""

    def __init__(self, amplitude_norm: AmplitudeNormalization, unet: nn.Module):
        super().__init__()
        self.amplitude_norm = amplitude_norm
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(self.amplitude_norm(x))


@contextlib.contextmanager
def amplitude_tracking_paused(model: nn.Module):
    """Stop the model's amplitude layers tracking batches (for a second pass on a batch)."""
    layers = [m for m in model.modules() if isinstance(m, AmplitudeNormalization)]
    tracking = [layer.tracking for layer in layers]
    for layer in layers:
        layer.tracking = False
    try:
        yield
    finally:
        for layer, was_tracking in zip(layers, tracking, strict=True):
            layer.tracking = was_tracking


@torch.no_grad()
def perturb_weights(parameters, alpha: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move each parameter by ``α·g/‖g‖`` (one norm over all gradients), in place.

    Returns the ``(parameter, perturbation)`` pairs, to undo the move.
    """
    params = [p for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    scale = alpha / (norm + 1e-12)
    moves = [(p, p.grad * scale) for p in params]
    for p, move in moves:
        p.add_(move)
    return moves


class HarmoFL(Algorithm):
    name = "harmofl"
    options = METHODS[name].options

    def build_model(self):
        amplitude_norm = AmplitudeNormalization(
            self.in_channels,
            self.config.resolved().image_size,
            float(self.opt["amplitude_ratio"]),
            float(self.opt["amplitude_momentum"]),
        )
        return HarmonizedUNet(amplitude_norm, super().build_model())

    # ---- client side ----------------------------------------------------------------

    def begin_local(self, model, ctx: LocalContext):
        model.amplitude_norm.tracking = not bool(ctx.global_payload.get(FROZEN_KEY, False))

    def optimizer_step(self, model, optimizer, loss_fn):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        moves = perturb_weights(model.parameters(), self.opt["alpha"])
        optimizer.zero_grad(set_to_none=True)
        with amplitude_tracking_paused(model):
            loss_fn().backward()
        with torch.no_grad():
            for p, move in moves:
                p.sub_(move)
        optimizer.step()
        return loss.detach()

    # ---- server side ----------------------------------------------------------------

    def aggregate_weights(self, updates: list[ClientUpdate], global_weights):
        return weighted_average([u.weights for u in updates], [1.0] * len(updates))

    def aggregate(self, updates, global_weights, global_payload, weight_privacy=None):
        weights = self.next_weights(updates, global_weights, weight_privacy)
        if bool(global_payload.get(FROZEN_KEY, False)):
            weights[AMPLITUDE_KEY] = global_weights[AMPLITUDE_KEY].clone()
        return weights, {FROZEN_KEY: torch.tensor(True)}
