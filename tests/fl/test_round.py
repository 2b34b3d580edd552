"""The engine-neutral round: screen the replies, record the round, aggregate."""

import torch

from fedbcs_fl.algorithms.base import ClientUpdate
from fedbcs_fl.round import aggregate_round
from fedbcs_fl.screening import ScreeningPolicy

from .._tiny import tiny_algorithm

GLOBAL = {"w": torch.zeros(2)}
GOOD = ClientUpdate({"w": torch.ones(2)}, 3, metrics={"loss": 0.5})
BAD = ClientUpdate({"w": torch.tensor([float("nan"), 0.0])}, 3, metrics={"loss": 0.7})


def test_a_round_aggregates_the_accepted_replies_and_records_every_client():
    """Every client asked is in the record; only screened replies are read into it."""
    result = aggregate_round(
        tiny_algorithm("fedavg"),
        4,
        ["A", "B", "C"],
        [("A", GOOD), ("B", BAD)],
        {"C": "timed out"},
        GLOBAL,
        {},
        ScreeningPolicy(),
    )
    assert torch.equal(result.weights["w"], torch.ones(2)) and result.payload == {}
    assert result.record == {
        "round": 4,
        "clients": ["A", "B", "C"],
        "aggregated": ["A"],
        "faults": {"C": "timed out"},
        "rejected": {"B": "non-finite values in w"},
        "capped": {},
        "discarded": None,
        "client_metrics": {"A": {"loss": 0.5}},
        "prototypes_uploaded": {"A": 0},
        "bytes_up": {"A": 8},
        "bytes_down": 8,
    }


def test_a_round_without_an_accepted_reply_keeps_the_global_model():
    result = aggregate_round(
        tiny_algorithm("fedavg"), 1, ["B"], [("B", BAD)], {}, GLOBAL, {}, ScreeningPolicy()
    )
    assert result.aggregated == [] and result.weights is GLOBAL


def test_a_rejected_reply_is_not_read_into_the_record():
    """Its weights' bytes and its payload are never counted: they may hold anything."""
    hostile = ClientUpdate(
        {"w": torch.tensor([float("nan"), 0.0]), "extra": "not a tensor"}, 3, metrics={}
    )
    result = aggregate_round(
        tiny_algorithm("fedavg"),
        1,
        ["A", "B"],
        [("A", GOOD), ("B", hostile)],
        {},
        GLOBAL,
        {},
        ScreeningPolicy(),
    )
    assert result.aggregated == ["A"] and "B" in result.record["rejected"]
    assert result.record["bytes_up"] == {"A": 8}
