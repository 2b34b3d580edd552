"""FedContrast-GPA: both contrasts against a naive float64 formula, process-aware weights."""

import pytest
import torch

from fedbcs_fl.algorithms._protos import PIXEL_PROTOTYPES
from fedbcs_fl.algorithms.base import ClientUpdate
from fedbcs_fl.algorithms.fedcontrast import OWNER_KEY
from fedbcs_fl.screening import screen_updates

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


ME, OTHER, THIRD = 11, 22, 33  # client ids


def test_loss_matches_naive_formula_at_tiny_tau():
    tau = 0.005
    features, masks, own, others = _inputs()
    state = {"own_protos": own, "own_labels": torch.tensor([0, 1]), OWNER_KEY: ME}
    # The global payload holds every client's prototypes, this client's among them.
    payload = {
        "protos": torch.cat([others[:2], own, others[2:]]),
        "labels": torch.tensor([0, 1, 0, 1, 0]),
        "owners": torch.tensor([OTHER, OTHER, ME, ME, THIRD]),
    }
    method = tiny_algorithm("fedcontrast", tau=tau, lambda_own=0.5, lambda_others=2.0)
    ctx = context(payload, state)
    loss = method.prototype_loss(features, masks, ctx)
    own_loss = _naive_infonce(features, masks, own, torch.tensor([0, 1]), tau)
    others_loss = _naive_infonce(features, masks, others, torch.tensor([0, 1, 0]), tau)
    assert ctx.logs["fedcontrast/own"] == pytest.approx(own_loss.item(), rel=1e-4)
    assert ctx.logs["fedcontrast/others"] == pytest.approx(others_loss.item(), rel=1e-4)
    assert loss.item() == pytest.approx((0.5 * own_loss + 2 * others_loss).item(), rel=1e-4)


def test_own_rows_are_told_apart_by_owner_not_by_value():
    """Another client's rows equal to this one's are others'; this client's own rows,
    changed in transit, are still its own. The payload before owner ids matched values:
    it got both wrong, and a run resumed from it still does, for that one round."""
    tau = 0.1
    features, masks, own, others = _inputs()
    labels = torch.tensor([0, 1])
    state = {"own_protos": own, "own_labels": labels, OWNER_KEY: ME}
    method = tiny_algorithm("fedcontrast", tau=tau)

    def others_loss(protos, owners=None):
        payload = {"protos": protos, "labels": labels.repeat(2)}
        if owners is not None:
            payload["owners"] = torch.tensor(owners)
        ctx = context(payload, state)
        method.prototype_loss(features, masks, ctx)
        return ctx.logs["fedcontrast/others"]

    same = torch.cat([own, own.clone()])  # another client sent exactly this one's rows
    expected = _naive_infonce(features, masks, own, labels, tau).item()
    assert expected > 0.1
    assert others_loss(same, [ME, ME, OTHER, OTHER]) == pytest.approx(expected, rel=1e-4)
    assert others_loss(same) == 0  # by value: no other client

    changed = torch.cat([own.half().float(), others[:2]])  # own rows rounded in transit
    expected = _naive_infonce(features, masks, others[:2], labels, tau).item()
    assert others_loss(changed, [ME, ME, OTHER, OTHER]) == pytest.approx(expected, rel=1e-4)
    by_value = _naive_infonce(features, masks, changed, labels.repeat(2), tau).item()
    assert others_loss(changed) == pytest.approx(by_value, rel=1e-4)
    assert by_value != pytest.approx(expected, rel=1e-2)


def test_own_prototypes_of_one_class_and_one_client():
    features, masks, own, _ = _inputs()
    state = {"own_protos": own[:1], "own_labels": torch.tensor([0]), OWNER_KEY: ME}
    # One client only: the global payload is its own prototypes, no one else's.
    payload = {"protos": own[:1], "labels": torch.tensor([0]), "owners": torch.tensor([ME])}
    ctx = context(payload, state)
    loss = tiny_algorithm("fedcontrast").prototype_loss(features, masks, ctx)
    # One own prototype: class-0 pixels have a single (positive) logit, loss 0;
    # class-1 pixels have no positive and are left out. No other client: L_others = 0.
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert ctx.logs["fedcontrast/others"] == 0
    ctx = context()
    assert tiny_algorithm("fedcontrast").prototype_loss(features, masks, ctx) == 0


def test_end_local_keeps_own_prototypes_and_sends_steps_and_owner():
    method = tiny_algorithm("fedcontrast")
    ctx = context()
    method.begin_local(None, ctx)
    owner = ctx.state[OWNER_KEY]
    method.begin_local(None, ctx)  # drawn once, kept for every round
    assert ctx.state[OWNER_KEY] == owner
    ctx.steps_done, ctx.steps_scheduled = 3, 4
    features, masks, _, _ = _inputs()
    method.record_prototypes(features, masks, ctx)
    payload = method.end_local(None, ctx)
    assert payload["steps"].tolist() == [3, 4] and payload["owner"].tolist() == [owner]
    assert ctx.state["own_protos"] is payload["protos"] and method.count_prototypes(payload) == 2


def test_weights_by_examples_times_progress_and_all_prototypes_down():
    method = tiny_algorithm("fedcontrast")
    protos = {"protos": torch.ones(1, 2), "labels": torch.tensor([1])}
    a_sent = protos | {"steps": torch.tensor([1, 2]), "owner": torch.tensor([ME])}
    b_sent = {
        "protos": torch.ones(2, 2),
        "labels": torch.tensor([0, 1]),
        "steps": torch.tensor([2, 2]),
        "owner": torch.tensor([OTHER]),
    }
    a = ClientUpdate({"w": torch.tensor([1.0])}, 2, a_sent)
    b = ClientUpdate({"w": torch.tensor([6.0])}, 4, b_sent)
    weights, down = method.aggregate([a, b], {}, {})
    # Weights 2·½ = 1 and 4·1 = 4.
    assert weights["w"].item() == pytest.approx((1 * 1 + 4 * 6) / 5)
    assert down["protos"].shape == (3, 2) and down["labels"].tolist() == [1, 0, 1]
    assert down["owners"].tolist() == [ME, OTHER, OTHER]
    weights, _ = method.aggregate([a], {}, {})
    assert weights["w"].item() == 1.0


_WEIGHTS = {"w": torch.tensor([1.0])}


def _reply(method, steps=(3, 4), owner=(ME,)):
    """A FedContrast reply to screen: one prototype, ``steps`` and ``owner`` as given."""
    payload = {
        "protos": torch.ones(1, method.prototype_dim(PIXEL_PROTOTYPES)),
        "labels": torch.tensor([1]),
        "steps": torch.tensor(list(steps)),
        "owner": torch.tensor(list(owner)),
    }
    return ClientUpdate(dict(_WEIGHTS), 2, payload)


@pytest.mark.parametrize(
    "steps",
    [[0, 0], [0, 4], [5, 4], [-1, 4], [1.0, 2.0], [1, 2, 3]],
    ids=["nothing-scheduled", "no-step-done", "more-than-scheduled", "negative", "float", "3"],
)
def test_screening_rejects_steps_that_would_weigh_an_update_wrongly(steps):
    method = tiny_algorithm("fedcontrast")
    good, bad = _reply(method), _reply(method, steps=steps)
    accepted, rejected = screen_updates(method, [("good", good), ("bad", bad)], _WEIGHTS)
    assert [name for name, _ in accepted] == ["good"]
    assert set(rejected) == {"bad"} and rejected["bad"].startswith("payload steps")


def test_screening_rejects_an_owner_that_is_not_one_id():
    method = tiny_algorithm("fedcontrast")
    good, bad = _reply(method), _reply(method, owner=[ME, ME + 1])
    accepted, rejected = screen_updates(method, [("good", good), ("bad", bad)], _WEIGHTS)
    assert [name for name, _ in accepted] == ["good"]
    assert rejected == {"bad": "payload owner has shape (2,), expected (1,)"}


@pytest.mark.e2e
def test_two_rounds_end_to_end():
    history, simulation = run_two_rounds("fedcontrast")
    assert all(n == 2 for r in history for n in r["prototypes_uploaded"].values())
    for key in ("fedcontrast/own", "fedcontrast/others"):
        assert logged(history[0], key) == [] and len(logged(history[1], key)) == 2
    down = simulation.global_payload
    assert down["protos"].shape == (4, 8) and down["owners"].shape == (4,)
    assert len(set(down["owners"].tolist())) == 2  # one id per client
    for client in simulation.clients:
        own = down["owners"] == client.state[OWNER_KEY]
        torch.testing.assert_close(down["protos"][own], client.state["own_protos"])
