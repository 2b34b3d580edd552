"""CDPA: the per-level decomposition equals the materialised embedding (the oracle)."""

from __future__ import annotations

import copy

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from fedbcs_models import (
    FUSIONS,
    CDPAHead,
    CDPAModel,
    StreamEmbedding,
    UNet,
    build_fedbcs_unet,
)
from fedbcs_ops import reference

RTOL = 1e-5
NUM_CLASSES = 3


def assert_relative(actual, expected, rtol=RTOL, what=""):
    """max |actual − expected| ≤ rtol · max |expected|, printing where they differ."""
    error = (actual - expected).abs()
    scale = expected.abs().max().clamp_min(1e-12)
    worst = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    assert error.max() <= rtol * scale, (
        f"{what}: max error {error.max():.3g} at {worst} "
        f"({actual[worst]:.6g} vs {expected[worst]:.6g}), scale {scale:.3g}"
    )


def _backbones():
    yield "unet", lambda: UNet(in_channels=1, classes=2, init_features=8, fsr_stages=(2, 3, 4))
    yield (
        "smp-fpn",
        lambda: smp.FPN(
            "resnet18",
            encoder_weights=None,
            in_channels=1,
            classes=2,
            decoder_pyramid_channels=32,
            decoder_segmentation_channels=32,
        ),
    )


@pytest.fixture(
    scope="module",
    params=[(b, f) for b in dict(_backbones()) for f in FUSIONS],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def embedded(request):
    backbone, fusion = request.param
    torch.manual_seed(0)
    model = CDPAModel(dict(_backbones())[backbone](), proto_dim=16, fusion=fusion)
    x = torch.randn(2, 1, 64, 64)
    labels = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    _, embeddings = model.forward_with_embeddings(x)
    return model, x, labels, embeddings


def _oracle(full, protos):
    pixels = full[:, None]  # [B, 1, D, H, W]
    protos = protos[None, :, :, None, None]  # [1, M, D, 1, 1]
    return {
        "cosine": F.cosine_similarity(pixels, protos, dim=2),
        "sq_norm": full.square().sum(1),
        "sq_distance": (pixels - protos).square().sum(2),
    }


@pytest.mark.parametrize("stream", ["encoder", "decoder"])
def test_decomposition_equals_materialised(embedded, stream):
    *_, embeddings = embedded
    embedding = embeddings[stream]
    protos = torch.randn(5, embedding.dim)
    with torch.no_grad():
        expected = _oracle(embedding.materialize(), protos)
        assert_relative(embedding.cosine(protos), expected["cosine"], what="cosine")
        assert_relative(embedding.sq_norm(), expected["sq_norm"], what="sq_norm")
        assert_relative(embedding.sq_distance(protos), expected["sq_distance"], what="sq_dist")


@pytest.mark.parametrize("stream", ["encoder", "decoder"])
def test_gradients_equal_materialised(embedded, stream):
    model, x, *_ = embedded
    x = x[..., :32, :32]
    protos = torch.randn(4, model.head.embedding_dim(stream), requires_grad=True)

    def grads(loss_of):
        model.zero_grad()
        protos.grad = None
        _, embeddings = model.forward_with_embeddings(x)
        loss_of(embeddings[stream]).backward()
        head = [p.grad.clone() for p in model.head.fusions[stream].parameters()]
        return [*head, protos.grad.clone()]

    def decomposed(e):
        return e.cosine(protos).sum() + e.sq_distance(protos).mean()

    def materialised(e):
        o = _oracle(e.materialize(), protos)
        return o["cosine"].sum() + o["sq_distance"].mean()

    for got, want in zip(grads(decomposed), grads(materialised), strict=True):
        assert_relative(got, want, rtol=1e-4, what="gradient")


@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("stream", ["encoder", "decoder"])
def test_selected_pixels_equal_materialised(embedded, stream, density):
    """The ``pixels=`` path (only some target pixels) equals the oracle at those pixels,
    in values and in gradients, whether the mask is sparse or dense."""
    model, x, *_ = embedded
    x = x[..., :32, :32]
    protos = torch.randn(4, model.head.embedding_dim(stream), requires_grad=True)
    _, embeddings = model.forward_with_embeddings(x)
    size = embeddings[stream].target_size
    mask = torch.rand(x.shape[0], *size, generator=torch.Generator().manual_seed(1)) < density

    def grads(loss_of):
        model.zero_grad()
        protos.grad = None
        _, embeddings = model.forward_with_embeddings(x)
        values = loss_of(embeddings[stream])
        sum(v.sum() for v in values).backward()
        head = [p.grad.clone() for p in model.head.fusions[stream].parameters()]
        return [v.detach() for v in values], [*head, protos.grad.clone()]

    def selected(e):
        sq_norm = e.sq_norm(pixels=mask)
        return sq_norm, e.cosine(protos, sq_norm, pixels=mask), e.sq_distance(protos, pixels=mask)

    def materialised(e):
        o = _oracle(e.materialize(), protos)
        pick = lambda t: t.permute(0, 2, 3, 1)[mask]
        return o["sq_norm"][mask], pick(o["cosine"]), pick(o["sq_distance"])

    (got_values, got_grads), (want_values, want_grads) = grads(selected), grads(materialised)
    names = ["sq_norm", "cosine", "sq_distance"]
    for got, want, what in zip(got_values, want_values, names, strict=True):
        assert_relative(got, want, what=what)
    for got, want in zip(got_grads, want_grads, strict=True):
        assert_relative(got, want, rtol=1e-4, what="gradient")


@pytest.mark.parametrize("density", [0.02, 0.5])
@pytest.mark.parametrize("stream", ["encoder", "decoder"])
def test_sq_norm_and_dot_equal_the_two_calls(embedded, stream, density):
    """The one-pass ``sq_norm_and_dot`` (shared index, resampled levels and gathers) gives
    what ``sq_norm`` and ``dot`` give apart, in values and in the gradient of every
    parameter, the backbone's included; a sparse mask gathers several levels."""
    model, x, *_ = embedded
    # float64: the two orders of summing the gradient agree to rounding, not to 1e-5 in
    # float32.
    model, x = copy.deepcopy(model).double(), x[..., :32, :32].double()
    gen = torch.Generator().manual_seed(5)
    protos = torch.randn(5, model.head.embedding_dim(stream), generator=gen, dtype=x.dtype)

    def run(together: bool):
        model.zero_grad()
        _, embeddings = model.forward_with_embeddings(x)
        e = embeddings[stream]
        gen = torch.Generator().manual_seed(3)
        mask = torch.rand(x.shape[0], *e.target_size, generator=gen) < density
        if together:
            sq_norm, dots = e.sq_norm_and_dot(protos, pixels=mask)
        else:
            sq_norm, dots = e.sq_norm(pixels=mask), e.dot(protos, pixels=mask)
        (sq_norm.sqrt().sum() + dots.tanh().sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return [sq_norm.detach(), dots.detach()], grads

    (values, grads), (want_values, want_grads) = run(True), run(False)
    for got, want in zip(values, want_values, strict=True):
        assert_relative(got, want, rtol=1e-12, what="value")
    assert len(grads) == len(want_grads)
    for got, want in zip(grads, want_grads, strict=True):
        assert_relative(got, want, rtol=1e-10, what="gradient")


@pytest.mark.parametrize("stream", ["encoder", "decoder"])
def test_a_no_grad_use_first_leaves_the_gradients_whole(embedded, stream):
    """A use of the embedding with autograd off first (the prototype sums of a last local
    epoch) leaves the later loss its whole graph: every parameter, the backbone's
    included, gets the gradient of a fresh embedding (nothing made without a graph is
    kept and handed to a later call)."""
    model, x, labels, _ = embedded
    x, labels = x[..., :32, :32], labels[..., :32, :32]
    protos = torch.randn(4, model.head.embedding_dim(stream), generator=torch.Generator())

    def grads(use_without_grad_first: bool):
        model.zero_grad()
        _, embeddings = model.forward_with_embeddings(x)
        e = embeddings[stream]
        mask = e.labels_at_target(labels) > 0
        if use_without_grad_first:
            with torch.no_grad():
                e.prototype_sums(labels, NUM_CLASSES)
                e.sq_norm_and_dot(protos, pixels=mask)
        sq_norm, dots = e.sq_norm_and_dot(protos, pixels=mask)
        (sq_norm.sum() + dots.square().sum()).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fresh, after = grads(False), grads(True)
    assert len(after) == len(fresh)
    for got, want in zip(after, fresh, strict=True):
        assert_relative(got, want, rtol=1e-5, what="gradient")


def test_pixel_terms_under_inference_mode_and_a_second_backward(embedded):
    """The pixel terms work under ``torch.inference_mode`` (whose tensors have no version
    counter), then with grad on the same mask, and a second loss on the same embedding
    and mask backpropagates after the first one did."""
    model, x, labels, _ = embedded
    protos = torch.randn(3, model.head.embedding_dim("decoder"))
    with torch.inference_mode():
        _, embeddings = model.forward_with_embeddings(x)
        e = embeddings["decoder"]
        frozen_mask = e.labels_at_target(labels) > 0
        assert e.sq_norm(pixels=frozen_mask).shape == (int(frozen_mask.sum()),)
    levels = [level.clone().requires_grad_() for level in e.levels]
    e = StreamEmbedding(levels, e.partners, e.fusions, e.target_size)
    mask = frozen_mask.clone()
    with torch.inference_mode():
        e.sq_norm(pixels=mask)
    e.sq_norm(pixels=mask).sum().backward()
    first = levels[0].grad.clone()
    e.dot(protos, pixels=mask).sum().backward()
    assert not torch.equal(levels[0].grad, first)


def test_pixels_must_be_a_target_mask(embedded):
    *_, embeddings = embedded
    embedding = embeddings["decoder"]
    with pytest.raises(ValueError, match="pixels must be a bool mask"):
        embedding.sq_norm(pixels=torch.ones(2, 3, 3, dtype=torch.bool))


@pytest.mark.parametrize("ignore_index", [None, 0])
def test_prototype_sums_equal_class_sums_of_materialised(embedded, ignore_index):
    model, _, labels, embeddings = embedded
    sums = model.stream_prototype_sums(embeddings, labels, NUM_CLASSES, ignore_index)
    for stream, embedding in embeddings.items():
        target_labels = embedding.labels_at_target(labels)
        assert target_labels.shape[-2:] == embedding.target_size
        want_sums, want_counts = reference.class_sums(
            embedding.materialize().detach(), target_labels, NUM_CLASSES, ignore_index
        )
        got_sums, got_counts = sums[stream]
        torch.testing.assert_close(got_counts, want_counts)
        assert_relative(got_sums.detach(), want_sums, what=f"{stream} sums")


def test_fusion_partners():
    head = CDPAHead([8, 16, 32, 64], [8, 16, 32], proto_dim=4, fusion="deepest")
    assert head.partners == {"encoder": [3, 3, 3], "decoder": [2, 2]}
    assert [conv.in_channels for conv in head.fusions["encoder"]] == [72, 80, 96]
    head = CDPAHead([8, 16, 32, 64], [8, 16, 32], proto_dim=4, fusion="adjacent")
    assert head.partners == {"encoder": [1, 2, 3], "decoder": [1, 2]}
    assert [conv.in_channels for conv in head.fusions["encoder"]] == [24, 48, 96]


def test_paper_setting_shapes_and_targets():
    model = build_fedbcs_unet(in_channels=1, classes=2, init_features=8, proto_dim=16)
    _, embeddings = model.forward_with_embeddings(torch.randn(1, 1, 64, 64))
    assert embeddings["encoder"].target_size == (64, 64)  # finest tapped level: enc1
    assert embeddings["decoder"].target_size == (16, 16)  # stride 4: dec3
    assert embeddings["encoder"].dim == embeddings["decoder"].dim == 3 * 16


def test_configurable_targets():
    model = CDPAModel(UNet(init_features=8), proto_dim=4, encoder_target=2, decoder_target=None)
    _, embeddings = model.forward_with_embeddings(torch.randn(1, 3, 64, 64))
    assert embeddings["encoder"].target_size == (32, 32)
    assert embeddings["decoder"].target_size == (64, 64)


def test_plain_forward_returns_logits_and_records_nothing():
    model = CDPAModel(UNet(init_features=8), proto_dim=4)
    x = torch.randn(1, 3, 32, 32)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 2, 32, 32)
    assert not any(module._forward_hooks for module in model.modules())


def test_deepcopy_is_independent():
    """Federated clients deep-copy the global model: hooks must follow the copy."""
    torch.manual_seed(0)
    model = build_fedbcs_unet(in_channels=1, init_features=8, proto_dim=4)
    clone = copy.deepcopy(model)
    assert clone.taps.model is clone.backbone
    with torch.no_grad():
        for parameter in clone.parameters():
            parameter.add_(1.0)
        clone.backbone.encoder_fsr["stage2"].weight.zero_()
        clone.backbone.encoder_fsr["stage2"].bias.fill_(5.0)
    x = torch.randn(1, 1, 32, 32)
    _, original = model.forward_with_embeddings(x)
    _, copied = clone.forward_with_embeddings(x)
    assert (copied["encoder"].levels[1] == 5.0).all()  # the clone's own FSR ran
    assert not torch.equal(original["encoder"].levels[1], copied["encoder"].levels[1])
    assert model.state_dict().keys() == clone.state_dict().keys()


def test_state_dict_covers_backbone_fsr_and_head():
    keys = build_fedbcs_unet(init_features=8, proto_dim=4).state_dict().keys()
    assert "backbone.encoder_fsr.stage2.logits" in keys
    assert "head.fusions.decoder.0.weight" in keys
    assert "backbone.segmentation_head.weight" in keys


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m, e: m.forward_with_embeddings(torch.randn(3, 64, 64)), ValueError, "x must"),
        (
            lambda m, e: m.forward_with_embeddings(torch.ones(1, 3, 64, 64, dtype=torch.long)),
            TypeError,
            "x must be a floating",
        ),
        (
            lambda m, e: m.forward_with_embeddings(torch.randn(1, 2, 64, 64)),
            ValueError,
            "x must have 3 channels",
        ),
        (lambda m, e: e.cosine(torch.randn(5, 7)), ValueError, r"protos must have shape \[M, 12\]"),
        (lambda m, e: e.sq_distance(torch.randn(12)), ValueError, "protos must have 2 dim"),
        (
            lambda m, e: e.prototype_sums(torch.zeros(1, 64, 64), 2),
            TypeError,
            "labels must be an integer",
        ),
        (
            lambda m, e: e.prototype_sums(torch.zeros(64, 64, dtype=torch.long), 2),
            ValueError,
            "labels must have 3 dim",
        ),
    ],
)
def test_input_validation_names_the_argument(call, error, match):
    model = CDPAModel(UNet(init_features=8), proto_dim=4)
    _, embeddings = model.forward_with_embeddings(torch.randn(1, 3, 64, 64))
    with pytest.raises(error, match=match):
        call(model, embeddings["encoder"])


def test_head_validation():
    with pytest.raises(ValueError, match="unknown fusion 'nearest'; valid: deepest, adjacent"):
        CDPAHead([8, 16], [8, 16], fusion="nearest")
    with pytest.raises(ValueError, match="decoder_channels must list at least 2"):
        CDPAHead([8, 16], [8])
    with pytest.raises(ValueError, match="encoder_target must be None or a positive int"):
        CDPAHead([8, 16], [8, 16], encoder_target=0)


@pytest.mark.parametrize(
    ("fsr", "cdpa", "count"),
    [
        (False, False, 7_757_186),
        (True, False, 7_758_088),
        (False, True, 8_266_626),
        (True, True, 8_267_528),
    ],
)
def test_paper_unet_parameter_counts(fsr, cdpa, count):
    """The figures in docs/models.md."""
    model = build_fedbcs_unet(3, 2, init_features=32, fsr=fsr, cdpa=cdpa)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize(
    "size, target",
    [
        ((32, 32), (8, 8)),
        ((32, 16), (4, 8)),
        ((30, 30), (8, 8)),
        ((8, 8), (32, 32)),
        ((12, 9), (4, 3)),
    ],
)
def test_resize_is_nearest_interpolation(size, target):
    """CDPA's resampling (a strided view when shrinking by whole factors) equals
    ``F.interpolate(mode="nearest")``, values and gradient."""
    from fedbcs_models._cdpa import _resize

    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, *target, dtype=torch.float64)
    got = _resize(x, target)
    want = F.interpolate(x, size=target, mode="nearest")
    assert torch.equal(got, want)
    (grad,) = torch.autograd.grad((got * weights).sum(), x)
    (want_grad,) = torch.autograd.grad((want * weights).sum(), x)
    assert torch.equal(grad, want_grad)
