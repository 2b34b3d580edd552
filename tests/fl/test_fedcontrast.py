"""FedContrast-GPA: both contrasts against a naive float64 formula, process-aware weights."""

import pytest
import torch

from fedbcs_fl.algorithms.base import ClientUpdate

from .._tiny import context, logged, run_two_rounds, tiny_algorithm


def _naive_infonce(features, masks, protos, labels, tau):
    """Mean over pixels with a positive of −log(Σ_pos e^{cos/τ} / Σ e^{cos/τ}), float64."""
    f = features.double().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    y = masks.reshape(-1)
    p = protos.double()
    cos = (f @ p.T) / f.norm(dim=1, keepdim=True) / p.norm(dim=1)
    e = (cos / tau).exp()
    positive = labels[None, :] == y[:, None]
    has = positive.any(1)
    return -torch.log((e * positive).sum(1)[has] / e.sum(1)[has]).mean()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(2, 4, 3, 3, generator=gen)
    masks = (torch.rand(2, 3, 3, generator=gen) > 0.5).long()
    own = torch.randn(2, 4, generator=gen)
    others = torch.randn(3, 4, generator=gen)  # two clients; the second lacks class 1
    return features, masks, own, others


def test_loss_matches_naive_formula_at_tiny_tau():
    tau = 0.005
    features, masks, own, others = _inputs()
    state = {"own_protos": own, "own_labels": torch.tensor([0, 1])}
    # The global payload holds every client's prototypes, this client's among them.
    payload = {
        "protos": torch.cat([others[:2], own, others[2:]]),
        "labels": torch.tensor([0, 1, 0, 1, 0]),
    }
    method = tiny_algorithm("fedcontrast", tau=tau, lambda_own=0.5, lambda_others=2.0)
    ctx = context(payload, state)
    loss = method.prototype_loss(features, masks, ctx)
    own_loss = _naive_infonce(features, masks, own, torch.tensor([0, 1]), tau)
    others_loss = _naive_infonce(features, masks, others, torch.tensor([0, 1, 0]), tau)
    assert ctx.logs["fedcontrast/own"] == pytest.approx(own_loss.item(), rel=1e-4)
    assert ctx.logs["fedcontrast/others"] == pytest.approx(others_loss.item(), rel=1e-4)
    assert loss.item() == pytest.approx((0.5 * own_loss + 2 * others_loss).item(), rel=1e-4)


def test_own_prototypes_of_one_class_and_one_client():
    features, masks, own, _ = _inputs()
    state = {"own_protos": own[:1], "own_labels": torch.tensor([0])}
    # One client only: the global payload is its own prototypes, no one else's.
    ctx = context({"protos": own[:1], "labels": torch.tensor([0])}, state)
    loss = tiny_algorithm("fedcontrast").prototype_loss(features, masks, ctx)
    # One own prototype: class-0 pixels have a single (positive) logit, loss 0;
    # class-1 pixels have no positive and are left out. No other client: L_others = 0.
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert ctx.logs["fedcontrast/others"] == 0
    ctx = context()
    assert tiny_algorithm("fedcontrast").prototype_loss(features, masks, ctx) == 0


def test_end_local_keeps_own_prototypes_and_sends_steps():
    method = tiny_algorithm("fedcontrast")
    ctx = context()
    ctx.steps_done, ctx.steps_scheduled = 3, 4
    features, masks, _, _ = _inputs()
    method.record_prototypes(features, masks, ctx)
    payload = method.end_local(None, ctx)
    assert payload["steps"].tolist() == [3, 4]
    assert ctx.state["own_protos"] is payload["protos"] and method.count_prototypes(payload) == 2


def test_weights_by_examples_times_progress_and_all_prototypes_down():
    method = tiny_algorithm("fedcontrast")
    protos = {"protos": torch.ones(1, 2), "labels": torch.tensor([1])}
    a = ClientUpdate({"w": torch.tensor([1.0])}, 2, protos | {"steps": torch.tensor([1, 2])})
    b = ClientUpdate({"w": torch.tensor([6.0])}, 4, protos | {"steps": torch.tensor([2, 2])})
    weights, down = method.aggregate([a, b], {}, {})
    # Weights 2·½ = 1 and 4·1 = 4.
    assert weights["w"].item() == pytest.approx((1 * 1 + 4 * 6) / 5)
    assert down["protos"].shape == (2, 2) and down["labels"].tolist() == [1, 1]
    weights, _ = method.aggregate([a], {}, {})
    assert weights["w"].item() == 1.0


@pytest.mark.e2e
def test_two_rounds_end_to_end():
    history, simulation = run_two_rounds("fedcontrast")
    assert all(n == 2 for r in history for n in r["prototypes_uploaded"].values())
    for key in ("fedcontrast/own", "fedcontrast/others"):
        assert logged(history[0], key) == [] and len(logged(history[1], key)) == 2
    assert simulation.global_payload["protos"].shape == (4, 8)
