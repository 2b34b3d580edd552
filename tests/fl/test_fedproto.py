"""FedProto: loss, payload and server mean on hand-made tensors; two rounds end to end."""

import pytest
import torch

from fedbcs_fl.algorithms.base import ClientUpdate

from .._tiny import context, logged, run_two_rounds, tiny_algorithm

# One 2×2 image, D = 2: class 0 at (0,0), (0,1), (1,0); class 1 at (1,1).
MASKS = torch.tensor([[[0, 0], [0, 1]]])
FEATURES = torch.tensor([[[1.0, 3.0], [1.0, 0.0]], [[0.0, 0.0], [1.0, 2.0]]])[None]
MEAN = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_loss_is_class_balanced_by_hand():
    fedproto = tiny_algorithm("fedproto", lambda_proto=2.0)
    ctx = context({"mean": MEAN, "mean_present": torch.tensor([True, True])})
    loss = fedproto.prototype_loss(FEATURES, MASKS, ctx)
    # ‖f − P_y‖² / 2 per pixel: class 0: 0, 2, 0.5 → 5/6; class 1: 0.5.
    expected = (5 / 6 + 0.5) / 2
    assert ctx.logs["fedproto/proto"] == pytest.approx(expected)
    assert loss.item() == pytest.approx(2 * expected)


def test_loss_without_a_global_prototype():
    fedproto = tiny_algorithm("fedproto")
    ctx = context({"mean": MEAN, "mean_present": torch.tensor([True, False])})
    assert fedproto.prototype_loss(FEATURES, MASKS, ctx).item() == pytest.approx(5 / 6)
    ctx = context()
    assert fedproto.prototype_loss(FEATURES, MASKS, ctx) == 0 and ctx.logs == {}


def test_payload_is_the_exact_class_mean_over_batches():
    fedproto = tiny_algorithm("fedproto")
    ctx = context()
    second = torch.full((1, 2, 2, 2), 5.0)
    fedproto.record_prototypes(FEATURES, torch.zeros_like(MASKS), ctx)
    fedproto.record_prototypes(second, torch.zeros_like(MASKS), ctx)
    payload = fedproto.end_local(None, ctx)
    # Class 1 has no pixel: not sent. Class 0: mean of the 8 pixels.
    assert payload["labels"].tolist() == [0]
    expected = torch.cat([FEATURES, second]).permute(0, 2, 3, 1).reshape(-1, 2).mean(0)
    torch.testing.assert_close(payload["protos"], expected[None])
    assert fedproto.count_prototypes(payload) == 1


def test_server_mean_is_unweighted_and_skips_absent_classes():
    fedproto = tiny_algorithm("fedproto")
    a = ClientUpdate({}, 1, {"protos": MEAN, "labels": torch.tensor([0, 1])})
    b = ClientUpdate({}, 9, {"protos": torch.tensor([[3.0, 2.0]]), "labels": torch.tensor([0])})
    down = fedproto.aggregate_payload([a, b], {})
    torch.testing.assert_close(down["mean"], torch.tensor([[2.0, 1.0], [0.0, 1.0]]))
    assert down["mean_present"].tolist() == [True, True]
    down = fedproto.aggregate_payload([b], {})
    torch.testing.assert_close(down["mean"], torch.tensor([[3.0, 2.0], [0.0, 0.0]]))
    assert down["mean_present"].tolist() == [True, False]


@pytest.mark.e2e
def test_two_rounds_end_to_end():
    history, simulation = run_two_rounds("fedproto")
    assert all(n == 2 for r in history for n in r["prototypes_uploaded"].values())
    assert logged(history[0], "fedproto/proto") == []
    assert len(logged(history[1], "fedproto/proto")) == 2
    assert simulation.global_payload["mean"].shape == (2, 8)
    assert simulation.global_payload["mean_present"].all()
