"""FPL: loss against a naive float64 formula, FINCH aggregation; two rounds end to end."""

import pytest
import torch

from fedbcs_fl.algorithms.base import ClientUpdate

from .._tiny import context, logged, run_two_rounds, tiny_algorithm


def _inputs():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 3, 3, generator=gen)
    masks = (torch.rand(2, 3, 3, generator=gen) > 0.5).long()
    payload = {
        "protos": torch.randn(3, 4, generator=gen),
        "labels": torch.tensor([0, 1, 1]),
        "mean": torch.randn(2, 4, generator=gen),
        "mean_present": torch.tensor([True, True]),
    }
    return features, masks, payload


def _naive(features, masks, payload, tau):
    """Per pixel, −log(Σ_pos e^{cos/τ} / Σ e^{cos/τ}) and ‖f − U_y‖² / D, in float64."""
    f = features.double().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    y = masks.reshape(-1)
    keep = payload["mean_present"][y]
    f, y = f[keep], y[keep]
    p = payload["protos"].double()
    cos = (f @ p.T) / f.norm(dim=1, keepdim=True) / p.norm(dim=1)
    e = (cos / tau).exp()
    positive = payload["labels"][None, :] == y[:, None]
    infonce = -torch.log((e * positive).sum(1) / e.sum(1)).mean()
    mse = ((f - payload["mean"].double()[y]) ** 2).mean()
    return infonce, mse


def test_loss_matches_naive_formula_at_tiny_tau():
    tau = 0.005  # e^{1/τ} = e^200: infinite in float32, finite in float64
    assert torch.isinf(torch.tensor(1 / tau).exp())
    features, masks, payload = _inputs()
    fpl = tiny_algorithm("fpl", tau=tau)
    ctx = context(payload)
    loss = fpl.prototype_loss(features, masks, ctx)
    infonce, mse = _naive(features, masks, payload, tau)
    assert ctx.logs["fpl/infonce"] == pytest.approx(infonce.item(), rel=1e-4)
    assert ctx.logs["fpl/mse"] == pytest.approx(mse.item(), rel=1e-5)
    assert loss.item() == pytest.approx((infonce + mse).item(), rel=1e-4)


def test_loss_with_one_class_of_prototypes():
    features, masks, payload = _inputs()
    payload["protos"], payload["labels"] = payload["protos"][:1], payload["labels"][:1]
    payload["mean_present"] = torch.tensor([True, False])
    ctx = context(payload)
    tiny_algorithm("fpl").prototype_loss(features, masks, ctx)
    # Only class-0 pixels count, and with every prototype positive InfoNCE is 0.
    assert ctx.logs["fpl/infonce"] == pytest.approx(0.0, abs=1e-6)
    assert ctx.logs["fpl/mse"] == pytest.approx(_naive(features, masks, payload, 1.0)[1].item())


def test_server_clusters_per_class_with_an_absent_class_and_one_client():
    fpl = tiny_algorithm("fpl")
    a = ClientUpdate(
        {}, 1, {"protos": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "labels": torch.tensor([0, 1])}
    )
    b = ClientUpdate({}, 5, {"protos": torch.tensor([[3.0, 2.0]]), "labels": torch.tensor([0])})
    down = fpl.aggregate_payload([a, b], {})
    # Class 0: two prototypes always form one cluster; class 1: client a's only.
    torch.testing.assert_close(down["protos"], torch.tensor([[2.0, 1.0], [0.0, 1.0]]))
    assert down["labels"].tolist() == [0, 1]
    torch.testing.assert_close(down["mean"], down["protos"])
    down = fpl.aggregate_payload([b], {})
    torch.testing.assert_close(down["protos"], torch.tensor([[3.0, 2.0]]))
    assert down["labels"].tolist() == [0] and down["mean_present"].tolist() == [True, False]


@pytest.mark.e2e
def test_two_rounds_end_to_end():
    history, simulation = run_two_rounds("fpl")
    assert all(n == 2 for r in history for n in r["prototypes_uploaded"].values())
    for key in ("fpl/infonce", "fpl/mse"):
        assert logged(history[0], key) == [] and len(logged(history[1], key)) == 2
    down = simulation.global_payload
    assert sorted(set(down["labels"].tolist())) == [0, 1]
    assert down["protos"].shape == (len(down["labels"]), 8) and down["mean"].shape == (2, 8)
