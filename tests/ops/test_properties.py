"""Property-based tests: random shapes, class counts and label maps; random FSR inputs."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbcs_ops import class_prototypes, class_sums, fsr, reference

from .conftest import assert_close


@st.composite
def class_sum_cases(draw):
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    K = draw(st.integers(1, 5))
    mode = draw(st.sampled_from(["finer", "coarser"]))
    if mode == "finer":
        s = draw(st.integers(1, 3))
        H, W = s * h, s * w
    else:
        H, W = draw(st.integers(1, h)), draw(st.integers(1, w))
    seed = draw(st.integers(0, 2**31 - 1))
    ignore = draw(st.sampled_from([None, 0, 255]))
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(B, C, h, w, generator=gen) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    labels = torch.randint(0, K, (B, H, W), generator=gen)
    if ignore == 255:
        labels[torch.rand(B, H, W, generator=gen) < 0.3] = 255
    return features, labels, K, ignore


@settings(max_examples=60, deadline=None)
@given(class_sum_cases())
def test_class_sums_equal_reference(case):
    features, labels, K, ignore = case
    sums, counts = class_sums(features, labels, K, ignore_index=ignore)
    ref_sums, ref_counts = reference.class_sums(features.double(), labels, K, ignore)
    assert torch.equal(counts, ref_counts)
    assert torch.isfinite(sums).all()
    # Float32 summation error is bounded relative to the sum of magnitudes, not to the
    # (possibly cancelled) sum itself.
    magnitude, _ = reference.class_sums(features.double().abs(), labels, K, ignore)
    error = (sums.double() - ref_sums).abs()
    assert (error <= 1e-5 * magnitude + 1e-30).all(), f"max error {error.max():.3g}"
    protos, present = class_prototypes(features, labels, K, ignore_index=ignore)
    assert torch.isfinite(protos).all()
    assert present.tolist() == (ref_counts > 0).tolist()


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(2, 12),
    st.integers(2, 12),
    # Gates come from a softmax or a sigmoid: bounded away from 0 in practice. (At a
    # denormal gate the literal reference's atan2/polar gradient is NaN; ours is finite.)
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
    st.sampled_from([1e-2, 1.0, 1e2]),
    st.floats(-50, 50),
    st.integers(0, 2**31 - 1),
)
def test_fsr_equals_fft_reference(B, C, H, W, a, b, scale, offset, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64) * scale + offset
    x.requires_grad_()
    out = fsr(x, a, b)
    expected = reference.fsr_fft(x, a, b)
    assert torch.isfinite(out).all()
    assert_close(out, expected, 1e-6, "output")
    grad = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(out, x, grad)
    (g_ref,) = torch.autograd.grad(expected, x, grad)
    assert torch.isfinite(g_ours).all()
    assert_close(g_ours, g_ref, 1e-6, "grad")
