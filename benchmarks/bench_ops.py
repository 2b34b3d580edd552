"""fedbcs_ops against their literal references (and the memory floor for class_sums).

Groups: ``fsr-<shape>-<mode>`` with providers reference / autograd / torch / triton, modes
forward, backward and full (forward + backward); ``class_sums-<shape>`` with providers floor
(``features.sum((2, 3))``, one read of the tensor), reference, torch, triton.
"""

from __future__ import annotations

import pytest
import torch

from fedbcs_ops import class_sums, fsr, reference

from .conftest import DEVICE, sync

FSR_SHAPES = [(6, 64, 128, 128), (6, 256, 32, 32)]
CLASS_SUMS_SHAPES = [((6, 768, 128, 128), (6, 128, 128), 2)]
MODES = ["forward", "backward", "full"]


def _name(shape) -> str:
    return "x".join(map(str, shape))


def fsr_autograd(x, a, b, weight, bias, eps=1e-5):
    """The same math as ``fsr`` written as plain differentiable ops, for autograd.

    Only a benchmark provider: it shows what the explicit two-pass backward buys on CPU.
    """
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    ar = a * torch.rsqrt(var + eps)
    alpha = (ar + b) * weight
    beta = bias - ar * mean * weight
    return torch.addcmul(beta[:, :, None, None], x, alpha[:, :, None, None])


def setup_fsr(shape, provider: str, mode: str):
    """A zero-argument callable timing ``mode`` of FSR for ``provider``, plus its setup."""
    gen = torch.Generator().manual_seed(0)
    B, C = shape[:2]
    x = torch.randn(shape, generator=gen).to(DEVICE).requires_grad_()
    a = torch.rand(B, C, generator=gen).to(DEVICE).requires_grad_()
    b = torch.rand(B, C, generator=gen).to(DEVICE).requires_grad_()
    weight = torch.rand(C, generator=gen).to(DEVICE).requires_grad_()
    bias = torch.rand(C, generator=gen).to(DEVICE).requires_grad_()
    grad = torch.randn(shape, generator=gen).to(DEVICE)
    op = {"reference": reference.fsr_fft, "autograd": fsr_autograd}.get(provider, fsr)

    def forward():
        return op(x, a, b, weight, bias)

    if mode == "forward":

        def run():
            with torch.no_grad():
                forward()
            sync()

        return run, None
    if mode == "full":

        def run():
            forward().backward(grad)
            sync()

        return run, None
    state = {}

    def setup():
        state["out"] = forward()
        sync()

    def run():
        state["out"].backward(grad)
        sync()

    return run, setup


def setup_class_sums(feature_shape, label_shape, num_classes, provider: str):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(feature_shape, generator=gen).to(DEVICE)
    labels = torch.randint(0, num_classes, label_shape, generator=gen).to(DEVICE)
    if provider == "floor":
        op = lambda: features.sum((2, 3))
    elif provider == "reference":
        op = lambda: reference.class_sums(features, labels, num_classes)
    else:
        op = lambda: class_sums(features, labels, num_classes)

    def run():
        op()
        sync()

    return run, None


def _time(benchmark, run, setup, rounds):
    if setup is None:
        run()  # warm-up: allocator, kernel compilation
        benchmark.pedantic(run, rounds=rounds, iterations=1)
    else:
        setup()
        run()
        benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)


@pytest.mark.parametrize("provider", ["reference", "autograd", "torch", "triton"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", FSR_SHAPES, ids=_name)
def test_fsr(benchmark, backend_env, shape, mode, provider):
    backend_env(provider)
    benchmark.group = f"fsr-{_name(shape)}-{mode}"
    run, setup = setup_fsr(shape, provider, mode)
    _time(benchmark, run, setup, rounds=3 if provider == "reference" else 10)


@pytest.mark.parametrize("provider", ["floor", "reference", "torch", "triton"])
@pytest.mark.parametrize("feature_shape, label_shape, num_classes", CLASS_SUMS_SHAPES)
def test_class_sums(benchmark, backend_env, feature_shape, label_shape, num_classes, provider):
    backend_env(provider)
    benchmark.group = f"class_sums-{_name(feature_shape)}"
    run, setup = setup_class_sums(feature_shape, label_shape, num_classes, provider)
    _time(benchmark, run, setup, rounds=3 if provider == "reference" else 10)
