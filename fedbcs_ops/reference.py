"""Literal implementations: test oracles and benchmark baselines, not for training.

Each follows the paper (and the authors' released code) step by step, with no algebraic
shortcut, so that the fast ops can be checked against the text they implement.

- :func:`fsr_fft`: FFT → amplitude and phase → blend amplitudes → inverse FFT (eq. 4–7).
- :func:`spectral_mean_amplitude_fft`: the mean of the full ``|FFT2(x) / (H·W)|`` (eq. 4).
- :func:`fsr_gates_fft`, :func:`fsr_module_fft`: an :class:`~fedbcs_ops.FSR` module's
  gates and output, with GAP(χ_norm) taken from the spectrum of IN(x) itself (eq. 6).
- :func:`class_sums`, :func:`class_prototypes`: upsample, permute, mask per class, sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x − μ) / sqrt(var + eps) over H×W per sample and channel, biased variance."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + eps)


def _per_channel(value, x: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    return value[:, :, None, None] if value.ndim == 2 else value


def fsr_fft(x, a, b, weight=None, bias=None, eps: float = 1e-5):
    """Paper eq. 4–7 literally: keep the phase of x, blend ``a·|F(IN(x))| + b·|F(x)|``."""
    spectrum = torch.fft.fft2(x)
    amplitude = spectrum.abs()
    phase = torch.atan2(spectrum.imag, spectrum.real)
    amplitude_norm = torch.fft.fft2(instance_norm(x, eps)).abs()
    blended = _per_channel(a, x) * amplitude_norm + _per_channel(b, x) * amplitude
    out = torch.fft.ifft2(torch.polar(blended, phase)).real
    if weight is not None:
        out = out * weight[None, :, None, None]
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


def spectral_mean_amplitude_fft(x: torch.Tensor) -> torch.Tensor:
    """GAP(χ): the mean of the full amplitude spectrum of eq. 4, which divides the sum by
    H·W (``norm="forward"``), ``[B, C]``."""
    return torch.fft.fft2(x, norm="forward").abs().mean(dim=(-2, -1))


def fsr_gates_fft(module, x: torch.Tensor):
    """The (a, b) gates of an FSR module, with eq. 6 evaluated on full spectra."""
    if module.gate == "static":
        a, b = torch.softmax(module.logits / module.temperature, dim=0)
        return a, b
    gap_norm = spectral_mean_amplitude_fft(instance_norm(x, module.eps))
    gap = spectral_mean_amplitude_fft(x)
    gates = torch.sigmoid(module.gate_proj(torch.cat([gap_norm, gap], dim=1)))
    return gates.chunk(2, dim=1)


def fsr_module_fft(module, x: torch.Tensor) -> torch.Tensor:
    """What an FSR module computes, by the literal FFT route."""
    a, b = fsr_gates_fft(module, x)
    return fsr_fft(x, a, b, module.weight, module.bias, module.eps)


def _features_at_label_resolution(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if features.dtype != torch.float64:
        features = features.float()
    return F.interpolate(features, size=labels.shape[-2:], mode="nearest")


def class_sums(features, labels, num_classes: int, ignore_index: int | None = None):
    """Per-class feature sums and pixel counts at label resolution, as the released code.

    Sums are float32, or float64 for float64 features (a more exact oracle).
    """
    pixels = _features_at_label_resolution(features, labels).permute(0, 2, 3, 1)
    pixels = pixels.reshape(-1, features.shape[1])
    flat = labels.reshape(-1)
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    sums = torch.zeros(num_classes, features.shape[1], dtype=dtype)
    counts = torch.zeros(num_classes, dtype=torch.float32)
    for k in range(num_classes):
        if ignore_index is not None and k == ignore_index:
            continue
        mask = flat == k
        sums[k] = pixels[mask].sum(0)
        counts[k] = mask.sum()
    return sums.to(features.device), counts.to(features.device)


def class_prototypes(features, labels, num_classes: int, ignore_index: int | None = None):
    """Per-class mean features ``[K, C]`` and which classes are present ``[K]``."""
    sums, counts = class_sums(features, labels, num_classes, ignore_index)
    present = counts > 0
    protos = torch.where(present[:, None], sums / counts.clamp_min(1)[:, None], 0.0)
    return protos, present
