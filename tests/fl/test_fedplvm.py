"""FedPLVM: per-image class means, dual-level clustering, and the α-sparsity loss."""

import pytest
import torch

from fedbcs_fl.aggregation import cluster_class_rows
from fedbcs_fl.algorithms.base import ClientUpdate
from fedbcs_fl.algorithms.fedplvm import image_class_means

from .._tiny import context, logged, run_two_rounds, tiny_algorithm


def test_image_class_means_equal_a_loop():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(3, 4, 5, 6, generator=gen)
    masks = (torch.rand(3, 5, 6, generator=gen) > 0.5).long()
    masks[1] = 0  # image 1 has no class-1 pixel
    means, labels = image_class_means(features, masks, 2)
    expected = [
        (features[b].permute(1, 2, 0)[masks[b] == c].mean(0), c)
        for b in range(3)
        for c in range(2)
        if (masks[b] == c).any()
    ]
    assert labels.tolist() == [c for _, c in expected]
    torch.testing.assert_close(means, torch.stack([m for m, _ in expected]))


def test_local_clusters_of_per_image_class_means():
    method = tiny_algorithm("fedplvm", prototype_pass="last-epoch")
    ctx = context()
    method.begin_local(None, ctx)
    # Five 1×2 images, D = 2: pixel 0 background [1, 1], pixel 1 foreground, whose
    # directions form two groups; image 4 has no foreground.
    foreground = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0], [1.0, 1.0]])
    features = torch.stack([torch.stack([torch.ones(2), f], dim=1) for f in foreground])
    masks = torch.tensor([[[0, 1]]] * 4 + [[[0, 0]]])
    method.record_prototypes(features[:3, :, None], masks[:3], ctx)
    method.record_prototypes(features[3:, :, None], masks[3:], ctx)
    payload = method.end_local(None, ctx)
    assert payload["labels"].tolist() == [0, 1, 1]
    expected = torch.stack([torch.ones(2), foreground[:2].mean(0), foreground[2:4].mean(0)])
    torch.testing.assert_close(payload["protos"], expected)
    assert method.count_prototypes(payload) == 3 and ctx.state == {}


def _train_one_epoch(method, batches):
    """Local training by hand: the payload, and the image class means of the training
    steps' features and of the trained model's."""
    torch.manual_seed(0)
    model = method.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx = context()
    method.begin_local(model, ctx)
    during = []
    for images, masks in batches:
        optimizer.zero_grad()
        method.training_loss(model, images, masks, ctx).backward()
        with torch.no_grad():
            during.append(
                image_class_means(model.taps.forward_with_levels(images).decoder[0], masks, 2)
            )
        optimizer.step()
    payload = method.end_local(model, ctx)
    with torch.no_grad():
        after = [
            image_class_means(model.taps.forward_with_levels(i).decoder[0], m, 2)
            for i, m in batches
        ]
    return payload, during, after


def _clustered(image_means):
    means, labels = zip(*image_means, strict=True)
    return cluster_class_rows(torch.cat(means), torch.cat(labels), 2)


def test_prototypes_come_from_a_pass_after_training_or_from_the_last_epoch():
    gen = torch.Generator().manual_seed(3)
    batches = [
        (
            torch.rand(2, 3, 32, 32, generator=gen),
            (torch.rand(2, 32, 32, generator=gen) > 0.6).long(),
        )
        for _ in range(3)
    ]
    payload, during, after = _train_one_epoch(tiny_algorithm("fedplvm"), batches)
    expected = _clustered(after)  # as released: the trained model, over the same batches
    torch.testing.assert_close(payload["protos"], expected["protos"])
    assert torch.equal(payload["labels"], expected["labels"])
    from_steps = _clustered(during)["protos"]  # the weights moved after each step
    assert from_steps.shape != expected["protos"].shape or not torch.allclose(
        from_steps, expected["protos"], atol=1e-3
    )

    method = tiny_algorithm("fedplvm", prototype_pass="last-epoch")
    payload, during, _ = _train_one_epoch(method, batches)
    torch.testing.assert_close(payload["protos"], _clustered(during)["protos"])


def _naive(features, masks, payload, tau, alpha):
    """L_α and L_corr per pixel in float64, with the cosines clamped to [1e-6, 1]."""
    f = features.double().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    y = masks.reshape(-1)
    keep = payload["mean_present"][y]
    f, y = f[keep], y[keep]
    p = payload["protos"].double()
    cos = ((f @ p.T) / f.norm(dim=1, keepdim=True) / p.norm(dim=1)).clamp(1e-6, 1)
    e = (cos**alpha / tau).exp()
    positive = payload["labels"][None, :] == y[:, None]
    loss_alpha = -torch.log((e * positive).sum(1) / e.sum(1)).mean()
    g = payload["mean"].double()[y]
    to_mean = (f * g).sum(1) / f.norm(dim=1) / g.norm(dim=1)
    return loss_alpha, 2 * ((1 - to_mean) ** 2).mean()


@pytest.mark.parametrize("one_class, weight", [(False, None), (True, 3.0)])
def test_loss_matches_naive_formula_at_tiny_tau(one_class, weight):
    tau, alpha = 0.005, 0.25
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(2, 4, 3, 3, generator=gen)
    masks = (torch.rand(2, 3, 3, generator=gen) > 0.5).long()
    payload = {
        "protos": torch.randn(4, 4, generator=gen),  # some cosines are negative: clamped
        "labels": torch.tensor([0, 0, 1, 1]),
        "mean": torch.randn(2, 4, generator=gen),
        "mean_present": torch.tensor([True, True]),
    }
    if one_class:  # no client sent class 1
        payload["protos"], payload["labels"] = payload["protos"][:2], payload["labels"][:2]
        payload["mean_present"] = torch.tensor([True, False])
    options = {} if weight is None else {"lambda_plvm": weight}
    method = tiny_algorithm("fedplvm", tau=tau, **options)
    ctx = context(payload)
    loss = method.prototype_loss(features, masks, ctx)
    loss_alpha, loss_corr = _naive(features, masks, payload, tau, alpha)
    assert ctx.logs["fedplvm/alpha"] == pytest.approx(loss_alpha.item(), rel=1e-4, abs=1e-6)
    assert ctx.logs["fedplvm/corr"] == pytest.approx(loss_corr.item(), rel=1e-5)
    weight = 100 if weight is None else weight  # the released code's λ by default
    assert loss.item() == pytest.approx(weight * (loss_alpha + loss_corr).item(), rel=1e-4)


def test_server_clusters_again_with_an_absent_class_and_one_client():
    method = tiny_algorithm("fedplvm")
    a = ClientUpdate(
        {},
        1,
        {
            "protos": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]]),
            "labels": torch.tensor([0, 1, 1]),
        },
    )
    b = ClientUpdate({}, 1, {"protos": torch.tensor([[3.0, 0.0]]), "labels": torch.tensor([0])})
    down = method.aggregate_payload([a, b], {})
    torch.testing.assert_close(down["protos"], torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert down["labels"].tolist() == [0, 1] and down["mean_present"].all()
    down = method.aggregate_payload([b], {})
    assert down["labels"].tolist() == [0] and down["mean_present"].tolist() == [True, False]


@pytest.mark.e2e
def test_two_rounds_end_to_end():
    history, simulation = run_two_rounds("fedplvm")
    assert all(n >= 2 for r in history for n in r["prototypes_uploaded"].values())
    for key in ("fedplvm/alpha", "fedplvm/corr"):
        assert logged(history[0], key) == [] and len(logged(history[1], key)) == 2
    down = simulation.global_payload
    assert sorted(set(down["labels"].tolist())) == [0, 1] and down["mean"].shape == (2, 8)
