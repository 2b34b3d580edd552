"""fsr / FSR / spectral_mean_amplitude against the literal FFT route of paper eq. 4–7."""

import pytest
import torch

from fedbcs_ops import FSR, fsr, reference, spectral_mean_amplitude

from .conftest import DEVICE, assert_close

SHAPES = [(2, 3, 8, 8), (5, 7, 13, 17), (1, 4, 32, 30), (3, 16, 16, 16)]


def _inputs(shape, gate_form, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    B, C = shape[:2]
    # A per-channel offset and scale, as real feature maps have, so IN matters.
    x = torch.randn(shape, generator=gen) * (torch.rand(1, C, 1, 1, generator=gen) * 3 + 0.1)
    x = x + torch.randn(1, C, 1, 1, generator=gen) * 2
    if gate_form == "float":
        a, b = 0.3, 0.8
    elif gate_form == "scalar":
        a, b = torch.tensor(0.3), torch.tensor(0.8)
    else:
        a, b = torch.rand(B, C, generator=gen), torch.rand(B, C, generator=gen)
    weight = torch.rand(C, generator=gen) + 0.5
    bias = torch.randn(C, generator=gen)
    move = lambda t: t.to(DEVICE, dtype).requires_grad_() if isinstance(t, torch.Tensor) else t
    return [move(t) for t in (x, a, b, weight, bias)]


def _grads(out, tensors, grad):
    out.backward(grad)
    grads = [t.grad.clone() if isinstance(t, torch.Tensor) else None for t in tensors]
    for t in tensors:
        if isinstance(t, torch.Tensor):
            t.grad = None
    return grads


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("gate_form", ["float", "scalar", "per_sample"])
@pytest.mark.parametrize("affine", [True, False])
def test_fsr_matches_fft_reference(backend, shape, gate_form, affine):
    x, a, b, weight, bias = _inputs(shape, gate_form)
    if not affine:
        weight = bias = None
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    tensors = [x, a, b, weight, bias]

    out = fsr(x, a, b, weight, bias)
    ours = _grads(out, tensors, grad)
    expected = reference.fsr_fft(x, a, b, weight, bias)
    theirs = _grads(expected, tensors, grad)

    assert out.dtype == x.dtype and out.shape == x.shape
    assert_close(out, expected, 1e-4, "output")
    for name, g1, g2 in zip(["x", "a", "b", "weight", "bias"], ours, theirs, strict=True):
        if g2 is not None:
            assert_close(g1, g2, 1e-4, f"grad {name}")


@pytest.mark.parametrize("dtype, rtol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_fsr_low_precision(backend, dtype, rtol):
    x, a, b, weight, bias = _inputs((2, 5, 12, 9), "per_sample")
    out = fsr(x.detach().to(dtype), a, b, weight, bias)
    assert out.dtype == dtype
    assert_close(out.float(), reference.fsr_fft(x, a, b, weight, bias), rtol, "output")


def test_fsr_degenerate_channels_are_finite(backend):
    x = torch.randn(2, 4, 9, 11)
    x[:, 0] = 0.0  # all zero, as after a ReLU that killed the channel
    x[:, 1] = 3.7  # constant
    x[0, 2] = -1e-3
    x = x.to(DEVICE).requires_grad_()
    a = torch.tensor(0.6, device=DEVICE, requires_grad=True)
    weight = torch.ones(4, device=DEVICE, requires_grad=True)
    out = fsr(x, a, 0.4, weight)
    out.square().sum().backward()
    for name, t in [("out", out), ("x.grad", x.grad), ("a.grad", a.grad), ("w", weight.grad)]:
        assert torch.isfinite(t).all(), f"{name} is not finite"
    # A constant channel has IN(x) = 0, so FSR leaves b·x, up to one float32 rounding of
    # μ amplified by r = 1/sqrt(eps) ≈ 316: the same 1e-4 budget as everywhere else.
    assert_close(out[:, 1], 0.4 * x[:, 1], 1e-4, "constant channel")


def test_fsr_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    B, C = 2, 3
    x = torch.randn(B, C, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    a = torch.rand(B, C, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.rand(B, C, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(C, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.rand(C, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: fsr(*t), (x, a, b, w, bias))


def test_fsr_non_contiguous_input(backend):
    x, a, b, weight, bias = _inputs((2, 6, 10, 12), "per_sample")
    base = x.detach()
    channels_last = base.to(memory_format=torch.channels_last)
    transposed = base.transpose(2, 3).contiguous().transpose(2, 3)
    expected = reference.fsr_fft(base, a, b, weight, bias)
    for view in (channels_last, transposed):
        assert not view.is_contiguous()
        assert_close(fsr(view, a, b, weight, bias), expected, 1e-4, "non-contiguous")


@pytest.mark.parametrize("gate", ["static", "adaptive"])
def test_fsr_module_matches_literal_fft(backend, gate):
    torch.manual_seed(0)
    layer = FSR(6, gate=gate).to(DEVICE)
    with torch.no_grad():  # move every parameter off its initial value
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = _inputs((3, 6, 14, 11), "float")[0]
    grad = torch.randn(3, 6, 14, 11).to(DEVICE)

    out = layer(x)
    out.backward(grad)
    ours = {n: p.grad.clone() for n, p in layer.named_parameters()} | {"x": x.grad.clone()}
    layer.zero_grad()
    x.grad = None
    expected = reference.fsr_module_fft(layer, x)
    expected.backward(grad)
    theirs = {n: p.grad for n, p in layer.named_parameters()} | {"x": x.grad}

    assert_close(out, expected, 1e-4, "output")
    for name, g in theirs.items():
        assert_close(ours[name], g, 1e-4, f"grad {name}")


def test_static_gate_starts_balanced():
    a, b = FSR(4).gates(torch.randn(1, 4, 8, 8))
    assert a.item() == pytest.approx(0.5) and b.item() == pytest.approx(0.5)


def test_adaptive_gate_inputs_are_eq4_scaled_and_do_not_grow_with_the_image():
    # Eq. 4 divides the spectrum by H·W, so Σ|Z|² = mean(x²) (Parseval) and a mean amplitude
    # is at most sqrt(mean(x²) / (H·W)): the same pixel statistics on a larger image never
    # give larger gate inputs. (The unnormalised spectrum's mean grows as sqrt(H·W).)
    layer = FSR(4, gate="adaptive")
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    for side in (32, 128):
        x = 0.7 + 0.3 * torch.randn(2, 4, side, side, generator=gen, dtype=torch.float64)
        inputs[side] = layer.gate_inputs(x)
        gap_norm, gap = inputs[side].chunk(2, dim=1)
        assert (gap <= (x.pow(2).mean((2, 3)) / side**2).sqrt()).all()
        assert (gap_norm <= 1 / side).all()  # IN(x): mean 0, mean square var/(var + eps) < 1
    assert (inputs[128] < inputs[32]).all()


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (16, 5), (1, 6)])
def test_spectral_mean_amplitude(hw):
    x = torch.randn(2, 3, *hw, dtype=torch.float64, requires_grad=True)
    ours = spectral_mean_amplitude(x)
    expected = reference.spectral_mean_amplitude_fft(x)
    assert_close(ours, expected, 1e-10, "value")
    g1 = torch.autograd.grad(ours.sum(), x)[0]
    g2 = torch.autograd.grad(expected.sum(), x)[0]
    assert_close(g1, g2, 1e-10, "grad")


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: fsr(torch.randn(2, 3, 4), 0.5, 0.5), ValueError, "x must have 4 dimensions"),
        (lambda: fsr(torch.ones(1, 2, 3, 3, dtype=torch.int64), 0.5, 0.5), TypeError, "x must"),
        (lambda: fsr(torch.randn(2, 3, 4, 4), torch.ones(3), 0.5), ValueError, "a must be"),
        (lambda: fsr(torch.randn(2, 3, 4, 4), 0.5, "x"), TypeError, "b must be"),
        (lambda: fsr(torch.randn(2, 3, 4, 4), 0.5, 0.5, torch.ones(4)), ValueError, "weight"),
        (
            lambda: fsr(torch.randn(1, 2, 4, 4), 0.5, 0.5, torch.ones(2, device="meta")),
            ValueError,
            "one device",
        ),
        (lambda: FSR(4, gate="dynamic"), ValueError, "static, adaptive"),
        (lambda: FSR(4)(torch.randn(1, 3, 8, 8)), ValueError, r"\[B, 4, H, W\]"),
    ],
)
def test_fsr_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
