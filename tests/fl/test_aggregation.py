"""Server aggregation: weighted FedAvg and FINCH cluster prototypes."""

import pytest
import torch

from fedbcs_fl.aggregation import cluster_class_prototypes, finch_cluster_means, weighted_average


def test_weighted_average_exact():
    states = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)},
        {"w": torch.tensor([4.0, -1.0]), "n": torch.tensor(9)},
    ]
    out = weighted_average(states, [1, 3])
    assert out["w"].tolist() == [(1 + 3 * 4) / 4, (2 - 3) / 4]
    assert out["n"].item() == 7  # integer buffers are not averaged


def test_weighted_average_bad_input():
    with pytest.raises(ValueError, match="positive"):
        weighted_average([{"w": torch.ones(1)}], [0])
    with pytest.raises(ValueError, match="at least one"):
        weighted_average([], [])


def test_finch_one_and_two_vectors():
    one = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(finch_cluster_means(one), one)
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(finch_cluster_means(two), torch.tensor([[0.5, 0.5]]))


def test_finch_many_vectors_two_groups():
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 0.0, 0.0]) + 0.01 * torch.randn(4, 3, generator=gen)
    b = torch.tensor([0.0, 0.0, 1.0]) + 0.01 * torch.randn(3, 3, generator=gen)
    means = finch_cluster_means(torch.cat([a, b]))
    assert means.shape == (2, 3)
    torch.testing.assert_close(means[0], a.mean(0))
    torch.testing.assert_close(means[1], b.mean(0))


def test_cluster_class_prototypes_absent_class_and_mean():
    protos = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[3.0, 0.0], [9.0, 9.0]])]
    present = [torch.tensor([True, True]), torch.tensor([True, False])]
    out = cluster_class_prototypes(protos, present)
    # Class 0: two clients merge into one cluster (2, 0); class 1: client 0 only.
    assert out["labels"].tolist() == [0, 1]
    torch.testing.assert_close(out["protos"], torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(out["mean"], torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    assert out["mean_present"].tolist() == [True, True]


def test_cluster_class_prototypes_one_client():
    out = cluster_class_prototypes(
        [torch.tensor([[1.0, 2.0], [3.0, 4.0]])], [torch.tensor([False, True])]
    )
    assert out["labels"].tolist() == [1]
    assert out["mean_present"].tolist() == [False, True]
    assert (out["mean"][0] == 0).all()
