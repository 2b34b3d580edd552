"""Server aggregation: weighted FedAvg and FINCH cluster prototypes."""

import pytest
import torch

from fedbcs_fl.aggregation import (
    cluster_class_prototypes,
    finch_cluster_means,
    robust_aggregate,
    weighted_average,
)
from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.algorithms.base import ClientUpdate

from .._tiny import tiny_config


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


# ---- robust rules (--aggregation) ---------------------------------------------------------

HONEST = [
    torch.tensor([1.0, 2.0, 3.0]),
    torch.tensor([1.2, 2.2, 2.8]),
    torch.tensor([0.9, 1.9, 3.1]),
]
OUTLIER = torch.tensor([-50.0, 1e6, 3.0])


def _states(vectors):
    return [{"w": v, "n": torch.tensor(i)} for i, v in enumerate(vectors)]


def test_median_is_the_coordinate_median():
    out = robust_aggregate(_states([*HONEST, OUTLIER]), "median")
    # Per coordinate, the mean of the two middle values of four (numpy's median).
    assert out["w"].tolist() == pytest.approx([0.95, 2.1, 3.0])
    assert out["n"].item() == 0 and out["w"].dtype == torch.float32


def test_trimmed_mean_drops_one_value_at_each_end_per_coordinate():
    out = robust_aggregate(_states([*HONEST, OUTLIER]), "trimmed-mean")
    assert out["w"].tolist() == pytest.approx([(1.0 + 0.9) / 2, (2.0 + 2.2) / 2, (3.0 + 3.0) / 2])
    # 49 states: Flower's trim by fraction, int(1/49 · 49), would cut none.
    many = robust_aggregate(
        _states([torch.zeros(1)] * 47 + [torch.full((1,), 1e6)] * 2), "trimmed-mean"
    )
    assert many["w"].item() == pytest.approx(1e6 / 47)


def test_trimmed_mean_of_two_is_their_mean():
    out = robust_aggregate(_states(HONEST[:2]), "trimmed-mean")
    assert out["w"].tolist() == pytest.approx([1.1, 2.1, 2.9])


def test_krum_keeps_one_honest_state():
    out = robust_aggregate(_states([OUTLIER, *HONEST]), "krum")
    assert any(torch.equal(out["w"], v) for v in HONEST)


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum"])
def test_one_outlier_cannot_move_a_robust_rule_outside_the_honest_values(rule):
    out = robust_aggregate(_states([*HONEST, OUTLIER * 1e20]), rule)
    low = torch.stack(HONEST).min(0).values
    high = torch.stack(HONEST).max(0).values
    assert bool(((out["w"] >= low) & (out["w"] <= high)).all()), out["w"]


def test_an_unknown_rule_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: mean, median, trimmed-mean, krum"):
        robust_aggregate(_states(HONEST), "geomedian")


@pytest.mark.parametrize("name", ["fedavg", "harmofl", "fedcontrast"])
def test_a_robust_rule_replaces_every_methods_mean(name):
    """``--aggregation median`` ignores the example counts (and FedContrast's progress);
    ``mean`` is the method's own."""
    payload = {"steps": torch.tensor([1, 1])}
    counts = [1, 1, 1000]
    updates = [ClientUpdate({"w": v}, n, payload) for v, n in zip(HONEST, counts, strict=True)]
    median = build_algorithm(tiny_config(name, aggregation="median"))
    assert median.next_weights(updates, {})["w"].tolist() == pytest.approx([1.0, 2.0, 3.0])
    mean = build_algorithm(tiny_config(name)).next_weights(updates, {})["w"]
    assert mean.tolist() == pytest.approx(
        weighted_average([u.weights for u in updates], [1, 1, 1] if name == "harmofl" else counts)[
            "w"
        ].tolist()
    )


def test_an_unknown_aggregation_is_refused_when_the_config_is_resolved():
    with pytest.raises(ValueError, match="aggregation must be one of mean, median, trimmed-mean"):
        tiny_config("fedavg", aggregation="mode")
