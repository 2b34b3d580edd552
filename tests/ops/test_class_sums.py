"""class_sums / class_prototypes against the literal upsample-permute-mask reference."""

import pytest
import torch

from fedbcs_ops import class_prototypes, class_sums, reference
from fedbcs_ops._backend import ENV_VAR

from .conftest import DEVICE, assert_close


def _case(B, C, h, w, label_hw, K, seed=0, absent=(), dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    features = (torch.randn(B, C, h, w, generator=gen) + 1.0).to(DEVICE, dtype)
    labels = torch.randint(0, K, (B, *label_hw), generator=gen)
    for k in absent:
        labels[labels == k] = (k + 1) % K
    return features, labels.to(DEVICE)


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("num_classes", [1, 2, 5])
def test_class_sums_upsampled_labels(backend, scale, num_classes):
    features, labels = _case(3, 6, 5, 7, (5 * scale, 7 * scale), num_classes)
    sums, counts = class_sums(features, labels, num_classes)
    ref_sums, ref_counts = reference.class_sums(features, labels, num_classes)
    assert sums.dtype == torch.float32 and sums.shape == (num_classes, 6)
    assert torch.equal(counts.cpu(), ref_counts.cpu())
    assert_close(sums, ref_sums, 1e-5, f"sums s={scale}")


@pytest.mark.parametrize("label_hw", [(4, 6), (3, 5), (8, 3)], ids=str)
def test_class_sums_coarser_labels(backend, label_hw):
    features, labels = _case(2, 4, 8, 12, label_hw, 3)
    sums, counts = class_sums(features, labels, 3)
    ref_sums, ref_counts = reference.class_sums(features, labels, 3)
    assert torch.equal(counts.cpu(), ref_counts.cpu())
    assert_close(sums, ref_sums, 1e-5, "sums")


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_class_sums_ignore_index_and_absent(backend, scale):
    features, labels = _case(2, 5, 6, 6, (6 * scale, 6 * scale), 4, absent=(2,))
    labels[:, : 2 * scale] = 255
    sums, counts = class_sums(features, labels, 4, ignore_index=255)
    ref_sums, ref_counts = reference.class_sums(features, labels, 4, ignore_index=255)
    assert counts[2] == 0 and torch.equal(counts.cpu(), ref_counts.cpu())
    assert_close(sums, ref_sums, 1e-5, "sums")
    # An ignore_index inside [0, K) drops that class entirely.
    sums, counts = class_sums(features, labels % 4, 4, ignore_index=1)
    assert counts[1] == 0 and (sums[1] == 0).all()


def test_class_sums_half_features(backend):
    features, labels = _case(2, 8, 6, 10, (12, 20), 2, dtype=torch.float16)
    sums, _ = class_sums(features, labels, 2)
    assert sums.dtype == torch.float32
    assert_close(sums, reference.class_sums(features.float(), labels, 2)[0], 1e-5, "sums")


def test_class_sums_channels_last(backend):
    features, labels = _case(2, 8, 6, 10, (12, 20), 3)
    sums, _ = class_sums(features.to(memory_format=torch.channels_last), labels, 3)
    assert_close(sums, reference.class_sums(features, labels, 3)[0], 1e-5, "sums")


def test_class_sums_hand_computed():
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    labels = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]])
    sums, counts = class_sums(features, labels, 2)
    # Class 0: three pixels of feature 1.0 and one of 4.0; class 1: the other twelve.
    assert counts.tolist() == [4.0, 12.0]
    assert sums.squeeze(1).tolist() == [7.0, 1.0 + 2.0 * 4 + 3.0 * 4 + 4.0 * 3]


@pytest.mark.parametrize("scale", [1, 2])
def test_class_prototypes(backend, scale):
    features, labels = _case(2, 3, 4, 4, (4 * scale, 4 * scale), 3, absent=(1,))
    protos, present = class_prototypes(features, labels, 3)
    ref_protos, ref_present = reference.class_prototypes(features, labels, 3)
    assert present.tolist() == ref_present.tolist() == [True, False, True]
    assert torch.isfinite(protos).all() and (protos[1] == 0).all()
    assert_close(protos, ref_protos, 1e-5, "prototypes")


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        (torch.tensor([[[0, 3], [1, 1]]]), {}, "labels hold 3, outside"),
        (torch.tensor([[[0, -1], [1, 1]]]), {}, "labels hold -1"),
        (torch.tensor([[[0, 7], [1, 1]]]), {"ignore_index": 255}, "or ignore_index=255"),
        (torch.zeros(1, 3, 3, dtype=torch.long), {}, "integer multiple"),
        (torch.zeros(2, 2, 2, dtype=torch.long), {}, "batch"),
    ],
)
def test_class_sums_bad_labels(labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        class_sums(torch.randn(1, 2, 2, 2), labels, 2, **kwargs)


def test_class_sums_bad_types():
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        class_sums(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2), 2)
    with pytest.raises(ValueError, match="features must have 4 dimensions"):
        class_sums(torch.randn(2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="num_classes"):
        class_sums(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 0)


def test_ignored_labels_may_be_out_of_range():
    labels = torch.tensor([[[0, 255], [1, 1]]])
    _, counts = class_sums(torch.randn(1, 2, 2, 2), labels, 2, ignore_index=255)
    assert counts.tolist() == [1.0, 2.0]


def test_unknown_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match="valid: auto, torch, triton"):
        class_sums(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_forced_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        class_sums(torch.randn(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 2)
