"""FedUV: both terms against naive loops, the sampled loss, two rounds end to end."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fedbcs_fl.algorithms.base import LocalContext
from fedbcs_fl.algorithms.feduv import uniformity_term, variance_term
from fedbcs_fl.losses import segmentation_loss
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_algorithm, tiny_config, tiny_sites


def _naive_variance(logits, masks, target):
    batch, classes, height, width = logits.shape
    probs = logits.double().softmax(dim=1)
    pixels = [(b, i, j) for b in range(batch) for i in range(height) for j in range(width)]

    def spread(values):
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) + 1e-4)

    total = 0.0
    for c in range(classes):
        labels = [float(masks[p].item() == c) for p in pixels]
        gamma = spread(labels) if target == "labels" else 1 / math.sqrt(classes)
        total += max(0.0, gamma - spread([probs[b, c, i, j].item() for b, i, j in pixels]))
    return total / classes


def _naive_uniformity(features, sigma):
    """The potential from a loop over pairs, differentiable; ``sigma`` as the option."""
    count = features.shape[0]
    pairs = [((features[i] - features[j]) ** 2).sum() for i in range(count) for j in range(i)]
    if sigma == "released":  # the median of the non-zero ones, with its gradient
        nonzero = sorted((p for p in pairs if p.item() > 0), key=lambda p: p.item())
        scale = nonzero[(len(nonzero) - 1) // 2]
    else:
        scale = sorted(p.item() for p in pairs)[(len(pairs) - 1) // 2]
    return torch.stack([torch.exp(-p / scale) for p in pairs]).mean()


@pytest.mark.parametrize("target", ["labels", "balanced"])
def test_variance_term_matches_loop(target):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    masks = torch.randint(0, 3, (2, 4, 5), generator=gen)
    value = variance_term(logits, masks, target)
    assert value.item() == pytest.approx(_naive_variance(logits, masks, target), rel=1e-5)
    # A class never predicted anywhere (and a constant prediction): finite, no NaN gradient.
    constant = torch.zeros(2, 3, 4, 5)
    constant[:, 0] = 10.0
    constant.requires_grad_(True)
    value = variance_term(constant, masks, target)
    assert value.item() == pytest.approx(_naive_variance(constant.detach(), masks, target))
    value.backward()
    assert torch.isfinite(constant.grad).all()


def test_variance_hinge_is_off_at_a_perfect_prediction_only_with_the_labels_target():
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(2, 8, 8, generator=gen) > 0.7).long()  # about 30 % foreground
    perfect = 30.0 * (2 * F.one_hot(masks, 2).permute(0, 3, 1, 2).float() - 1)
    assert variance_term(perfect, masks, "labels").item() == 0.0
    # 1/√2 lies above every probability's spread: the hinge stays on, here about 0.26.
    q = masks.float().mean().item()
    expected = 1 / math.sqrt(2) - math.sqrt(q * (1 - q) + 1e-4)
    assert variance_term(perfect, masks, "balanced").item() == pytest.approx(expected, rel=1e-4)
    assert expected > 0.2
    # Short of perfect, the labels target still asks for more spread.
    assert variance_term(perfect / 30, masks, "labels").item() > 0


def test_uniformity_sigma_released_has_a_gradient_and_skips_zero_distances():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    features[3:] = features[2]  # four equal rows: 6 of the 15 distances are 0
    features.requires_grad_(True)
    gradients = {}
    for sigma in ("released", "detached"):
        value = uniformity_term(features, sigma)
        naive = _naive_uniformity(features, sigma)
        assert value.item() == pytest.approx(naive.item(), rel=1e-10)
        (gradients[sigma],) = torch.autograd.grad(value, features)
        (expected,) = torch.autograd.grad(naive, features)
        torch.testing.assert_close(gradients[sigma], expected)
    # Zeros in the median, or σ without gradient, give another potential and gradient.
    assert uniformity_term(features, "released") != uniformity_term(features, "detached")
    assert not torch.allclose(gradients["released"], gradients["detached"])


def test_uniformity_of_degenerate_features():
    assert uniformity_term(torch.randn(1, 4), "released").item() == 0.0
    same = torch.ones(5, 3, requires_grad=True)  # no non-zero distance: every pair is e^0
    value = uniformity_term(same, "released")
    value.backward()
    assert value.item() == 1.0 and torch.equal(same.grad, torch.zeros(5, 3))


@pytest.mark.parametrize(
    "options",
    [
        {"uniformity_level": "pixel"},
        {
            "uniformity_level": "pixel",
            "variance_target": "balanced",
            "uniformity_sigma": "detached",
        },
    ],
)
def test_pixel_level_training_loss_samples_reproducibly(options):
    target = options.get("variance_target", "labels")
    sigma = options.get("uniformity_sigma", "released")
    torch.manual_seed(0)
    algorithm = tiny_algorithm("feduv", uniformity_samples=16, **options)
    model = algorithm.build_model()
    images = torch.rand(2, 3, 32, 32)
    masks = torch.zeros(2, 32, 32, dtype=torch.long)  # foreground absent on this client
    tapped = model.taps.forward_with_levels(images)
    logits, pixels = tapped.output, tapped.decoder[0]
    features = pixels.permute(0, 2, 3, 1).reshape(-1, 8)
    generator = torch.Generator().manual_seed(0)  # the run's seed
    state = {}
    for _ in range(2):  # the second round continues the first round's sampling stream
        ctx = LocalContext(global_payload={}, state=state, device=torch.device("cpu"))
        algorithm.begin_local(model, ctx)
        loss = algorithm.training_loss(model, images, masks, ctx)
        assert algorithm.end_local(model, ctx) == {}
        assert set(state) == {"feduv/generator_state"}  # tensors only: checkpointable

        chosen = torch.randperm(2 * 32 * 32, generator=generator)[:16]
        variance = variance_term(logits, masks, target)
        uniformity = uniformity_term(features[chosen], sigma)
        expected = segmentation_loss(logits, masks) + 2.5 * variance + 0.5 * uniformity
        torch.testing.assert_close(loss, expected)
        assert ctx.logs["feduv/variance"] == pytest.approx(variance.item())
        assert ctx.logs["feduv/uniformity"] == pytest.approx(uniformity.item())


def test_image_level_uniformity_spreads_one_mean_feature_per_image():
    torch.manual_seed(0)
    algorithm = tiny_algorithm("feduv")  # uniformity_level image, the default
    model = algorithm.build_model()
    images = torch.rand(3, 3, 32, 32)
    masks = (images[:, 0] > 0.5).long()
    tapped = model.taps.forward_with_levels(images)
    logits, pixels = tapped.output, tapped.decoder[0]
    ctx = LocalContext(global_payload={}, state={}, device=torch.device("cpu"))
    algorithm.begin_local(model, ctx)
    loss = algorithm.training_loss(model, images, masks, ctx)
    uniformity = uniformity_term(pixels.mean(dim=(2, 3)), "released")
    expected = (
        segmentation_loss(logits, masks)
        + 2.5 * variance_term(logits, masks, "labels")
        + 0.5 * uniformity
    )
    torch.testing.assert_close(loss, expected)
    # Not the pixel level's potential, and its gradient reaches the pixel features' weights.
    pixel_level = uniformity_term(pixels.permute(0, 2, 3, 1).reshape(-1, 8), "released")
    assert abs(uniformity.item() - pixel_level.item()) > 1e-3
    model.zero_grad()
    uniformity.backward()
    last_block = [
        p.grad for n, p in model.named_parameters() if "decoder" in n and p.grad is not None
    ]
    assert last_block and any(g.abs().sum() > 0 for g in last_block)


@pytest.mark.e2e
def test_two_rounds_end_to_end_and_resumed(tmp_path):
    sites = tiny_sites()
    config = tiny_config("feduv")
    history = Simulation(config, sites, progress=False).run()
    assert len(history) == 2 and math.isfinite(history[-1]["mean_dice"])
    for metrics in history[-1]["client_metrics"].values():
        assert math.isfinite(metrics["loss"])
        assert 0 < metrics["feduv/uniformity"] < 1 and metrics["feduv/variance"] >= 0

    # Stopped after round 1 and resumed from its checkpoint: the sampling continues.
    Simulation(replace(config, rounds=1), sites, out_dir=tmp_path, progress=False).run()
    resumed = Simulation(config, sites, out_dir=tmp_path, progress=False)
    resumed.resume()
    assert resumed.run()[-1]["client_metrics"] == history[-1]["client_metrics"]
    assert resumed.global_payload == {}
