"""MOON: the contrastive loss from hand-made z, the previous model, two rounds end to end."""

import math
from dataclasses import replace

import pytest
import torch

from fedbcs_fl.algorithms.base import LocalContext
from fedbcs_fl.algorithms.moon import (
    GLOBAL_KEY,
    PREVIOUS_KEY,
    PREVIOUS_WEIGHTS_KEY,
    moon_contrastive_loss,
)
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_algorithm, tiny_config, tiny_sites


def test_contrastive_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z_global = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # cos 1 and 1/√2
    z_previous = torch.tensor([[0.0, 3.0], [-1.0, -1.0]])  # cos 0 and −1
    tau = 0.5
    rows = [(1.0, 0.0), (1 / math.sqrt(2), -1.0)]
    expected = sum(
        -math.log(math.exp(g / tau) / (math.exp(g / tau) + math.exp(p / tau))) for g, p in rows
    ) / len(rows)
    loss = moon_contrastive_loss(z, z_global, z_previous, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_loss_small_tau_does_not_overflow():
    z = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z_global = torch.tensor([[0.0, 1.0]])  # cos 0
    z_previous = torch.tensor([[1.0, 0.0]])  # cos 1: exp(1 / 0.005) overflows float32
    loss = moon_contrastive_loss(z, z_global, z_previous, tau=0.005)
    # log(1 + e^200) = 200 + log1p(e^−200)
    assert loss.item() == pytest.approx(200.0, rel=1e-6)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_frozen_copies_tap_their_own_unet():
    """The frozen global model is a deep copy: its taps must run the copy, not the original."""
    moon = tiny_algorithm("moon")
    model = moon.build_model()
    ctx = LocalContext(global_payload={}, state={}, device=torch.device("cpu"))
    moon.begin_local(model, ctx)
    frozen = ctx.scratch[GLOBAL_KEY].backbone
    assert frozen.taps.model is frozen.unet
    assert frozen.unet is not model.backbone.unet


def test_previous_model_kept_between_rounds():
    torch.manual_seed(0)
    moon = tiny_algorithm("moon")
    model = moon.build_model()
    assert any(key.startswith("head.") for key in model.state_dict())  # aggregated with the rest
    images = torch.rand(2, 3, 32, 32)
    masks = (torch.rand(2, 32, 32) > 0.7).long()
    state = {}

    # First round: no previous model, it is the global one: the term is log 2.
    ctx = LocalContext(global_payload={}, state=state, device=torch.device("cpu"))
    moon.begin_local(model, ctx)
    moon.training_loss(model, images, masks, ctx)
    assert ctx.logs["moon/contrastive"] == pytest.approx(math.log(2), rel=1e-6)
    assert moon.end_local(model, ctx) == {}
    stored = state[PREVIOUS_WEIGHTS_KEY]
    assert set(state) == {PREVIOUS_WEIGHTS_KEY}  # the frozen models are the round's scratch

    # Second round, from other global weights: z_prev comes from the stored weights.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctx = LocalContext(global_payload={}, state=state, device=torch.device("cpu"))
    moon.begin_local(model, ctx)
    previous, frozen_global = ctx.scratch[PREVIOUS_KEY], ctx.scratch[GLOBAL_KEY]
    assert not any(p.requires_grad for p in previous.parameters())
    moon.training_loss(model, images, masks, ctx).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    _, z = model.forward_with_projection(images)
    _, z_global = frozen_global.forward_with_projection(images)
    model.load_state_dict(stored)
    _, z_previous = model.forward_with_projection(images)
    expected = moon_contrastive_loss(z, z_global, z_previous, tau=0.5)
    assert ctx.logs["moon/contrastive"] == pytest.approx(expected.item(), rel=1e-5)
    assert ctx.logs["moon/contrastive"] < math.log(2)  # z is its global self, not its previous


@pytest.mark.e2e
@pytest.mark.parametrize("num_sites", [1, 4])
def test_two_rounds_end_to_end_and_resumed(tmp_path, num_sites):
    sites = tiny_sites(num_sites)
    config = tiny_config("moon")
    history = Simulation(config, sites, progress=False).run()
    assert len(history) == 2 and math.isfinite(history[-1]["mean_dice"])
    first, second = (record["client_metrics"] for record in history)
    for name in first:
        assert first[name]["moon/contrastive"] == pytest.approx(math.log(2), rel=1e-5)
        assert math.isfinite(second[name]["moon/contrastive"])
        assert math.isfinite(second[name]["loss"])

    # Stopped after round 1 and resumed from its checkpoint: the previous models come back.
    Simulation(replace(config, rounds=1), sites, out_dir=tmp_path, progress=False).run()
    resumed = Simulation(config, sites, out_dir=tmp_path, progress=False)
    resumed.resume()
    assert resumed.run()[-1]["client_metrics"] == second
    assert all("moon/previous_weights" in client.state for client in resumed.clients)
    assert resumed.global_payload == {}
