"""FedUV: both terms against naive loops, the sampled loss, two rounds end to end."""

import math
from dataclasses import replace

import pytest
import torch

from fedbcs_fl.algorithms.base import LocalContext
from fedbcs_fl.algorithms.feduv import uniformity_term, variance_term
from fedbcs_fl.losses import segmentation_loss
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_algorithm, tiny_config, tiny_sites


def _naive_variance(logits):
    batch, classes, height, width = logits.shape
    probs = logits.double().softmax(dim=1)
    total = 0.0
    for c in range(classes):
        values = [
            probs[b, c, i, j].item()
            for b in range(batch)
            for i in range(height)
            for j in range(width)
        ]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        total += max(0.0, 1 / math.sqrt(classes) - math.sqrt(var + 1e-4))
    return total / classes


def _naive_uniformity(features):
    rows = features.double().tolist()
    sq = [
        sum((a - b) ** 2 for a, b in zip(rows[i], rows[j], strict=True))
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
    ]
    sigma = sorted(sq)[(len(sq) - 1) // 2]
    return sum(math.exp(-d / sigma) for d in sq) / len(sq)


def test_variance_term_matches_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    assert variance_term(logits).item() == pytest.approx(_naive_variance(logits), rel=1e-5)
    # A class never predicted anywhere (and a constant prediction): finite, no NaN gradient.
    constant = torch.zeros(2, 3, 4, 5)
    constant[:, 0] = 10.0
    constant.requires_grad_(True)
    value = variance_term(constant)
    assert value.item() == pytest.approx(_naive_variance(constant.detach()), rel=1e-5)
    assert value.item() == pytest.approx(1 / math.sqrt(3) - 0.01, rel=1e-3)
    value.backward()
    assert torch.isfinite(constant.grad).all()


def test_uniformity_term_matches_loop():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(7, 4, generator=gen)  # 21 pairs: an unambiguous median
    features[6] = features[5]  # a duplicated pixel feature: distance 0
    features.requires_grad_(True)
    value = uniformity_term(features)
    assert value.item() == pytest.approx(_naive_uniformity(features.detach()), rel=1e-5)
    value.backward()
    assert torch.isfinite(features.grad).all()
    # σ is detached: the gradient is that of exp(−d/σ) with σ a constant.
    sigma = torch.tensor(sorted(torch.pdist(features.detach()).pow(2).tolist())[10])
    fixed = torch.exp(-torch.pdist(features).pow(2) / sigma).mean()
    (expected,) = torch.autograd.grad(fixed, features)
    torch.testing.assert_close(features.grad, expected)
    assert uniformity_term(torch.randn(1, 4)).item() == 0.0


def test_training_loss_samples_reproducibly():
    torch.manual_seed(0)
    algorithm = tiny_algorithm("feduv", uniformity_samples=16)
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
        variance, uniformity = variance_term(logits), uniformity_term(features[chosen])
        expected = segmentation_loss(logits, masks) + 2.5 * variance + 0.5 * uniformity
        torch.testing.assert_close(loss, expected)
        assert ctx.logs["feduv/variance"] == pytest.approx(variance.item())
        assert ctx.logs["feduv/uniformity"] == pytest.approx(uniformity.item())


@pytest.mark.e2e
def test_two_rounds_end_to_end_and_resumed(tmp_path):
    sites = tiny_sites()
    config = tiny_config("feduv")
    history = Simulation(config, sites, progress=False).run()
    assert len(history) == 2 and math.isfinite(history[-1]["mean_dice"])
    for metrics in history[-1]["client_metrics"].values():
        assert math.isfinite(metrics["loss"])
        assert 0 < metrics["feduv/uniformity"] < 1 and metrics["feduv/variance"] > 0

    # Stopped after round 1 and resumed from its checkpoint: the sampling continues.
    Simulation(replace(config, rounds=1), sites, out_dir=tmp_path, progress=False).run()
    resumed = Simulation(config, sites, out_dir=tmp_path, progress=False)
    resumed.resume()
    assert resumed.run()[-1]["client_metrics"] == history[-1]["client_metrics"]
    assert resumed.global_payload == {}
