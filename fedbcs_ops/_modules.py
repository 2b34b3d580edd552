"""nn.Module front ends: they own the parameters and call the functional ops."""

from __future__ import annotations

import torch
from torch import nn

from ._fsr import fsr, spectral_mean_amplitude
from ._gates import GATES


class FSR(nn.Module):
    """Frequency-domain style recalibration (paper section 3.2), ``a·IN(x) + b·x`` + affine.

    Args:
        channels: C of the ``[B, C, H, W]`` input.
        gate: how (a, b) are chosen (default ``"static"``):
            ``"static"``, the released behaviour: ``(a, b) = softmax(logits / temperature)``
            with learnable ``logits`` (2,) starting at zeros, so a = b = 0.5;
            ``"adaptive"``, paper eq. 6: ``(a, b) = sigmoid(W_s [GAP(χ_norm); GAP(χ)])`` per
            sample and channel, ``W_s = gate_proj``, an ``nn.Linear(2C, 2C)`` started at
            zero (a = b = 0.5, like the static gate). The spectra are eq. 4's, divided by
            H·W (:meth:`gate_inputs`).
        temperature: softmax temperature of the static gate (default 0.1).
        eps: instance-norm epsilon (default 1e-5).

    Parameters: per-channel ``weight`` (ones) and ``bias`` (zeros), and the gate's.

    Example:
        >>> layer = FSR(16)
        >>> layer(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 16, 32, 32])
    """

    def __init__(
        self, channels: int, gate: str = "static", temperature: float = 0.1, eps: float = 1e-5
    ):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"unknown FSR gate {gate!r}; valid: {', '.join(GATES)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.channels = channels
        self.gate = gate
        self.temperature = temperature
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        if gate == "static":
            self.logits = nn.Parameter(torch.zeros(2))
        else:
            self.gate_proj = nn.Linear(2 * channels, 2 * channels)
            nn.init.zeros_(self.gate_proj.weight)
            nn.init.zeros_(self.gate_proj.bias)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b): two 0-d tensors (static) or two ``[B, C]`` tensors (adaptive)."""
        if self.gate == "static":
            a, b = torch.softmax(self.logits / self.temperature, dim=0)
            return a, b
        gates = torch.sigmoid(self.gate_proj(self.gate_inputs(x)))
        a, b = gates.chunk(2, dim=1)
        return a, b

    def gate_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``[GAP(χ_norm); GAP(χ)]`` of eq. 6, ``[B, 2C]``, with eq. 4's spectrum
        ``Z = FFT2(x) / (H·W)``.

        GAP(χ) is :func:`~fedbcs_ops.spectral_mean_amplitude`. The spectrum of IN(x) is r
        times that of x off DC and 0 at DC, where ``|Z(0)| = |μ|`` is one of the H·W terms
        of the mean, so ``GAP(χ_norm) = r·(GAP(χ) − |μ|/(H·W))``, with no second FFT.
        """
        spectral = spectral_mean_amplitude(x)
        var, mean = torch.var_mean(x.to(spectral.dtype), dim=(2, 3), correction=0)
        dc = mean.abs() / (x.shape[-2] * x.shape[-1])
        spectral_norm = torch.rsqrt(var + self.eps) * (spectral - dc)
        return torch.cat([spectral_norm, spectral], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"FSR({self.channels}) expects x of shape [B, {self.channels}, H, W], "
                f"got {tuple(x.shape)}"
            )
        a, b = self.gates(x)
        return fsr(x, a, b, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, gate={self.gate!r}, temperature={self.temperature}"
