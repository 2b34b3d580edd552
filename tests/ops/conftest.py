import pytest
import torch

from fedbcs_ops._backend import ENV_VAR, triton_importable

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run the test once per backend; Triton on CPU means the interpreter."""
    if request.param == "triton" and not triton_importable():
        pytest.skip("triton is not installed")
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


def assert_close(actual, expected, rtol, what=""):
    """Max-abs error relative to the largest reference magnitude; says where it differs."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(expected).all(), f"{what}: the reference itself is not finite"
    assert torch.isfinite(actual).all(), f"{what}: not finite where the reference is"
    diff = (actual - expected).abs()
    scale = expected.abs().max().clamp_min(1e-12)
    rel = (diff.max() / scale).item()
    where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.numel() else ()
    assert rel <= rtol, (
        f"{what}: relative error {rel:.3g} > {rtol:g} at index {where} "
        f"(got {actual[where].item():.6g}, expected {expected[where].item():.6g})"
    )
