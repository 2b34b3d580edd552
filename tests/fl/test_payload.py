"""The payload contract (fedbcs_fl/payload.py): every method declares what its clients
upload, and screening holds every reply to that declaration, the same way for every
method, and never raises.

Each test takes the honest round-1 replies of three clients (:func:`round_one_replies`),
breaks site-B's payload one way, and runs the round (:func:`aggregate_round`): site-B is
rejected with a reason that names the problem, and the others are aggregated.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from fedbcs_fl.algorithms import METHODS, build_algorithm
from fedbcs_fl.algorithms.base import ClientUpdate
from fedbcs_fl.algorithms.fedproto import FedProto
from fedbcs_fl.payload import PrototypeSet, payload_problem, prototype_sets
from fedbcs_fl.round import aggregate_round
from fedbcs_fl.screening import ScreeningPolicy

from .._tiny import prototype_methods, round_one_replies, tiny_algorithm, tiny_config

PROTOTYPE_METHODS = prototype_methods()
BAD = "site-B"
K = 2  # classes of the tiny run


@functools.cache
def honest(name: str, **options):
    """``(algorithm, global weights, replies)`` of round 1 of ``name`` for three clients."""
    algorithm = tiny_algorithm(name, **options)
    return (algorithm, *round_one_replies(algorithm))


HONEST_VALUE = object()


def run_round(
    name: str,
    payload=HONEST_VALUE,
    metrics=HONEST_VALUE,
    weights=HONEST_VALUE,
    num_examples=HONEST_VALUE,
    **options,
):
    """Round 1 of ``name`` (with method ``options``) where site-B's payload, metrics,
    weights or example count are replaced; the other clients' replies are honest."""
    algorithm, global_weights, replies = honest(name, **options)

    def pick(value, honest_value):
        return honest_value if value is HONEST_VALUE else value

    sent = []
    for site, update in replies:
        if site == BAD:
            update = ClientUpdate(
                pick(weights, update.weights),
                pick(num_examples, update.num_examples),
                pick(payload, update.payload),
                pick(metrics, update.metrics),
            )
        sent.append((site, update))
    clients = [site for site, _ in replies]
    return aggregate_round(algorithm, 1, clients, sent, {}, global_weights, {}, ScreeningPolicy())


def bad_payload(name: str, **options) -> dict:
    """A copy of site-B's honest payload, to break."""
    _, _, replies = honest(name, **options)
    return dict(dict(replies)[BAD].payload)


def assert_rejected(result, *fragments: str):
    """Only site-B is rejected, with a reason holding every fragment; the others aggregate."""
    assert list(result.record["rejected"]) == [BAD], result.record["rejected"]
    reason = result.record["rejected"][BAD]
    for fragment in fragments:
        assert fragment in reason, reason
    assert result.aggregated == ["site-A", "site-C"]


def test_the_prototype_methods_declare_their_prototypes():
    """The methods these tests run for every prototype method are found by their
    declaration: a method that stopped declaring its prototypes would drop out silently."""
    assert set(PROTOTYPE_METHODS) == {"fedproto", "fpl", "fedcontrast", "fedplvm", "fedbcs"}


# ---- honest replies keep their method's declaration -----------------------------------

HONEST = [
    *(pytest.param(name, {}, id=name) for name in METHODS),
    pytest.param("fedbcs", {"cdpa": False}, id="fedbcs-no-cdpa"),
    pytest.param("fedbcs", {"fusion": "adjacent"}, id="fedbcs-adjacent"),
]


@pytest.mark.parametrize("name, options", HONEST)
def test_honest_replies_hold_exactly_what_their_method_declares(name, options):
    algorithm, _, replies = honest(name, **options)
    declared = {key for entry in algorithm.uploads for key in entry.keys}
    for _, update in replies:
        assert set(update.payload) == declared
    result = run_round(name, **options)
    assert result.record["rejected"] == {}
    assert result.aggregated == ["site-A", "site-B", "site-C"]


@pytest.mark.parametrize("name, options", HONEST)
def test_table3_counts_the_rows_of_the_declared_prototype_sets(name, options):
    """``prototypes_uploaded`` is the number of rows of the sets the method declares: one
    per class id sent, none for a method without prototypes, and never the rows of another
    entry (FedContrast's two step counts and its id)."""
    algorithm, _, replies = honest(name, **options)
    counts = run_round(name, **options).record["prototypes_uploaded"]
    for site, update in replies:
        sent = sum(len(update.payload[p.labels]) for p in prototype_sets(algorithm.uploads))
        assert counts[site] == sent
        assert (sent > 0) == bool(prototype_sets(algorithm.uploads)), name


def test_table3_counts_only_declared_rows():
    """Rows under a key the declaration does not name are not prototypes, whatever the
    key; rows under a declared key are, whatever it is called."""

    class Renamed(FedProto):
        uploads = (PrototypeSet("rows", "ids"),)

    algorithm = Renamed(tiny_config("fedproto"), in_channels=3, num_classes=K)
    payload = {"rows": torch.zeros(3, 8), "ids": torch.zeros(3).long(), "protos": torch.zeros(5, 8)}
    assert algorithm.count_prototypes(payload) == 3


# ---- a malformed prototype set -------------------------------------------------------


def _replace(payload: dict, key: str, value) -> dict:
    return {**payload, key: value}


def _last_label(labels: torch.Tensor, value: int) -> torch.Tensor:
    labels = labels.clone()
    labels[-1] = value
    return labels


def _nan_row(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.clone()
    rows[0, 0] = float("nan")
    return rows


# case → (site-B's payload with prototype set p broken, what the reason must say).
PROTOTYPE_FAULTS = {
    "class-id-K": lambda pl, p: (
        _replace(pl, p.labels, _last_label(pl[p.labels], K)),
        f"payload {p.labels} holds class ids outside [0, {K})",
    ),
    "class-id-negative": lambda pl, p: (
        _replace(pl, p.labels, _last_label(pl[p.labels], -1)),
        f"payload {p.labels} holds class ids outside [0, {K})",
    ),
    "bool-labels": lambda pl, p: (
        _replace(pl, p.labels, pl[p.labels] > 0),
        f"payload {p.labels} has dtype torch.bool, expected torch.int64",
    ),
    "int64-rows": lambda pl, p: (
        _replace(pl, p.rows, pl[p.rows].long()),
        f"payload {p.rows} has dtype torch.int64, expected torch.float32",
    ),
    "float64-rows": lambda pl, p: (
        _replace(pl, p.rows, pl[p.rows].double()),
        f"payload {p.rows} has dtype torch.float64, expected torch.float32",
    ),
    "fewer-labels-than-rows": lambda pl, p: (
        _replace(pl, p.labels, pl[p.labels][:-1]),
        f"class ids for the {len(pl[p.rows])} rows of {p.rows}",
    ),
    "more-labels-than-rows": lambda pl, p: (
        _replace(pl, p.labels, torch.cat([pl[p.labels], torch.tensor([0])])),
        f"class ids for the {len(pl[p.rows])} rows of {p.rows}",
    ),
    "flat-rows": lambda pl, p: (
        _replace(pl, p.rows, pl[p.rows].flatten()),
        f"payload {p.rows} has shape",
    ),
    "wider-rows": lambda pl, p: (
        _replace(pl, p.rows, torch.cat([pl[p.rows], pl[p.rows][:, :1]], dim=1)),
        f"payload {p.rows} has shape",
    ),
    "rows-a-list": lambda pl, p: (
        _replace(pl, p.rows, pl[p.rows].tolist()),
        f"payload {p.rows} is a list, not a tensor",
    ),
    "labels-an-array": lambda pl, p: (
        _replace(pl, p.labels, pl[p.labels].numpy()),
        f"payload {p.labels} is a ndarray, not a tensor",
    ),
    "labels-none": lambda pl, p: (
        _replace(pl, p.labels, None),
        f"payload {p.labels} is a NoneType, not a tensor",
    ),
    "nan-row": lambda pl, p: (
        _replace(pl, p.rows, _nan_row(pl[p.rows])),
        f"non-finite values in payload {p.rows}",
    ),
}


@pytest.mark.parametrize("case", list(PROTOTYPE_FAULTS))
@pytest.mark.parametrize("name", PROTOTYPE_METHODS)
def test_a_malformed_prototype_set_is_rejected_with_its_reason(name, case):
    """For every prototype set the method declares (FedBCS: one per stream)."""
    algorithm, _, _ = honest(name)
    for prototypes in prototype_sets(algorithm.uploads):
        payload, reason = PROTOTYPE_FAULTS[case](bad_payload(name), prototypes)
        assert_rejected(run_round(name, payload), reason)


# ---- every declared entry of every method ----------------------------------------------

UPLOADING = [name for name in METHODS if tiny_algorithm(name).uploads]


def _declared_keys(name: str) -> list[str]:
    return [key for entry in tiny_algorithm(name).uploads for key in entry.keys]


@pytest.mark.parametrize("name", list(METHODS))
def test_an_undeclared_key_is_rejected(name):
    """Among them the keys another method sends (FedBCS's to a baseline and back)."""
    for key in ("injected", "labels/encoder", "labels"):
        if key not in _declared_keys(name):
            payload = _replace(bad_payload(name), key, torch.zeros(1).long())
            assert_rejected(run_round(name, payload), f"undeclared payload key {key!r}")


@pytest.mark.parametrize("name", UPLOADING)
def test_a_missing_declared_key_is_rejected(name):
    for key in _declared_keys(name):
        payload = {k: v for k, v in bad_payload(name).items() if k != key}
        assert_rejected(run_round(name, payload), f"missing payload key {key!r}")


@pytest.mark.parametrize("name", UPLOADING)
def test_a_declared_value_of_another_type_dtype_or_shape_is_rejected(name):
    for key in _declared_keys(name):
        value = bad_payload(name)[key]
        other_dtype = torch.int64 if value.is_floating_point() else torch.float32
        broken = {
            "is a list, not a tensor": value.tolist(),
            "is a float, not a tensor": 1.0,
            "has dtype": value.to(other_dtype),
            "has shape": value[None],
        }
        for fragment, wrong in broken.items():
            payload = _replace(bad_payload(name), key, wrong)
            assert_rejected(run_round(name, payload), f"payload {key} {fragment}")


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize(
    "payload, reason",
    [
        ([], "payload is a list, not a dict of tensors"),
        (None, "payload is a NoneType, not a dict of tensors"),
        ({0: torch.zeros(1)}, "undeclared payload key 0"),
    ],
    ids=["list", "none", "int-key"],
)
def test_a_payload_that_is_not_a_dict_of_named_tensors_is_rejected(name, payload, reason):
    assert_rejected(run_round(name, payload), reason)


@pytest.mark.parametrize(
    "metrics, reason",
    [
        ({"loss": "0.5"}, "metric 'loss' is a str, not a number"),
        ({"loss": [0.5]}, "metric 'loss' is a list, not a number"),
        ({"loss": np.array(0.5)}, "metric 'loss' is a ndarray, not a number"),
        ([0.5], "metrics are a list, not a dict of numbers"),
        ({"loss": float("inf")}, "non-finite metrics"),
    ],
    ids=["str", "list", "array", "not-a-dict", "inf"],
)
def test_metrics_that_are_not_finite_numbers_are_rejected(metrics, reason):
    assert_rejected(run_round("fedavg", metrics=metrics), reason)


@pytest.mark.parametrize(
    "replaced, reason",
    [
        ({"weights": None}, "weights are a NoneType, not a dict of tensors"),
        ({"weights": [0.5]}, "weights are a list, not a dict of tensors"),
        ({"num_examples": True}, "example count True is not a positive integer"),
        ({"num_examples": 2.0}, "example count 2.0 is not a positive integer"),
    ],
    ids=["weights-none", "weights-list", "count-bool", "count-float"],
)
def test_weights_or_a_count_of_another_type_are_rejected(replaced, reason):
    assert_rejected(run_round("fedavg", **replaced), reason)


@pytest.mark.parametrize("name", PROTOTYPE_METHODS)
def test_class_ids_are_checked_against_the_runs_number_of_classes(name):
    """Three classes (synthetic-prostate-zones): ids 0–2 pass, 3 does not; with two, 2
    does not either."""
    three = build_algorithm(tiny_config(name, dataset="synthetic-prostate-zones"))
    two = tiny_algorithm(name)
    for algorithm, classes in ((three, 3), (two, 2)):
        payload = dict(bad_payload(name))
        for prototypes in prototype_sets(algorithm.uploads):
            rows = torch.zeros(classes + 1, algorithm.prototype_dim(prototypes))
            payload[prototypes.rows] = rows
            payload[prototypes.labels] = torch.arange(classes + 1)
            reason = payload_problem(payload, algorithm)
            assert reason == f"payload {prototypes.labels} holds class ids outside [0, {classes})"
            payload[prototypes.labels] = torch.arange(classes + 1).clamp(max=classes - 1)
        assert payload_problem(payload, algorithm) is None
