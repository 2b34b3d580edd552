"""FedProx: the proximal term by hand, its gradient, and two rounds end to end."""

import math

import pytest
import torch
from torch import nn

from fedbcs_fl.algorithms.base import ClientUpdate, LocalContext
from fedbcs_fl.algorithms.fedprox import ANCHOR_KEY
from fedbcs_fl.losses import segmentation_loss
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_algorithm, tiny_config, tiny_sites


def _tiny_model(weight, bias):
    """A 1×1 conv from 1 channel to 2 classes with the given weights."""
    model = nn.Conv2d(1, 2, kernel_size=1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight).view(2, 1, 1, 1))
        model.bias.copy_(torch.tensor(bias))
    return model


def test_proximal_term_and_gradient_by_hand():
    algorithm = tiny_algorithm("fedprox", mu=0.1)
    model = _tiny_model([1.0, 2.0], [0.5, -1.0])
    ctx = LocalContext(global_payload={}, state={}, device=torch.device("cpu"))
    algorithm.begin_local(model, ctx)
    with torch.no_grad():  # local training moved the weights by (1, −2) and (1, 0)
        model.weight.copy_(torch.tensor([2.0, 0.0]).view(2, 1, 1, 1))
        model.bias.copy_(torch.tensor([1.5, -1.0]))
    images = torch.randn(2, 1, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)  # foreground absent on this client

    loss = algorithm.training_loss(model, images, masks, ctx)
    expected = 0.1 / 2 * (1 + 4 + 1 + 0)
    proximal = loss - segmentation_loss(model(images), masks)
    torch.testing.assert_close(proximal, torch.tensor(expected))
    assert math.isclose(ctx.logs["fedprox/proximal"], expected, rel_tol=1e-6)

    loss.backward()
    prox_grad_weight = model.weight.grad.clone()
    model.zero_grad()
    segmentation_loss(model(images), masks).backward()
    torch.testing.assert_close(
        prox_grad_weight - model.weight.grad, 0.1 * torch.tensor([1.0, -2.0]).view(2, 1, 1, 1)
    )
    # The snapshot is a detached copy of the round's global weights, kept for the round only.
    anchors = ctx.scratch[ANCHOR_KEY]
    assert not any(a.requires_grad for a in anchors)
    assert anchors[0].flatten().tolist() == [1.0, 2.0]
    assert algorithm.end_local(model, ctx) == {} and ctx.state == {}


def test_aggregation_size_weighted_and_one_client():
    algorithm = tiny_algorithm("fedprox")
    a = ClientUpdate({"w": torch.tensor([1.0])}, 1)
    b = ClientUpdate({"w": torch.tensor([4.0])}, 3)
    weights, payload = algorithm.aggregate([a, b], {}, {})
    assert weights["w"].item() == (1 + 3 * 4) / 4 and payload == {}
    weights, _ = algorithm.aggregate([b], {}, {})
    assert weights["w"].item() == 4.0


@pytest.mark.e2e
def test_two_rounds_end_to_end():
    sites = tiny_sites()
    config = tiny_config("fedprox")
    simulation = Simulation(config, sites, progress=False)
    history = simulation.run()
    assert len(history) == 2 and math.isfinite(history[-1]["mean_dice"])
    for metrics in history[-1]["client_metrics"].values():
        # Two steps per round: the second is away from the global weights.
        assert metrics["fedprox/proximal"] > 0 and math.isfinite(metrics["loss"])
    assert simulation.global_payload == {}
