"""Screening and the round against one bad site (issue 15 §1): absurd magnitudes, prototype
norms, a pair of sites, inflated example counts, an aggregate that is unusable, and random
malformed replies (hypothesis) that must never make screening or the round raise."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbcs_fl.algorithms.base import ClientUpdate
from fedbcs_fl.payload import prototype_sets
from fedbcs_fl.round import aggregate_round
from fedbcs_fl.screening import ScreeningPolicy, cap_example_counts, screen_updates

from .._tiny import round_one_replies, tiny_algorithm

BAD = "site-B"


@functools.cache
def honest(name: str):
    """``(algorithm, global weights, replies)`` of round 1 of ``name`` for three clients."""
    algorithm = tiny_algorithm(name)
    return (algorithm, *round_one_replies(algorithm))


def round_with(name: str, clients: int = 3, **changed):
    """Round 1 of ``name`` over the first ``clients`` honest replies, site-B's fields
    replaced by ``changed``."""
    algorithm, weights, replies = honest(name)
    sent = [
        (site, dataclasses.replace(update, **changed) if site == BAD else update)
        for site, update in replies[:clients]
    ]
    clients = [site for site, _ in sent]
    return aggregate_round(algorithm, 1, clients, sent, {}, weights, {}, ScreeningPolicy())


def bad_update(name: str) -> ClientUpdate:
    return dict(honest(name)[2])[BAD]


def scaled_rows(name: str, factor: float) -> dict:
    """Site-B's payload with the rows of every declared prototype set times ``factor``."""
    algorithm, _, _ = honest(name)
    payload = dict(bad_update(name).payload)
    for prototypes in prototype_sets(algorithm.uploads):
        payload[prototypes.rows] = payload[prototypes.rows] * factor
    return payload


def assert_only_bad_rejected(result, fragment: str):
    assert list(result.record["rejected"]) == [BAD], result.record["rejected"]
    assert fragment in result.record["rejected"][BAD], result.record["rejected"][BAD]
    assert BAD not in result.aggregated and result.aggregated


# ---- absurd magnitudes ------------------------------------------------------------------


def test_weights_of_an_absurd_magnitude_are_rejected_even_from_one_of_two_sites():
    """×1e30 weights are finite; with two sites nothing else would catch them."""
    weights = {k: v * 1e30 for k, v in bad_update("fedavg").weights.items()}
    assert_only_bad_rejected(round_with("fedavg", clients=2, weights=weights), "absurd magnitude")


@pytest.mark.parametrize("name", ["fedbcs", "fedproto"])
def test_prototypes_of_an_absurd_magnitude_are_rejected(name):
    """Prototypes ×1e18 are finite and FINCH (cosine) clusters them as any others: they
    reached the global prototypes and made every honest loss infinite."""
    result = round_with(name, clients=2, payload=scaled_rows(name, 1e18))
    assert_only_bad_rejected(result, "absurd magnitude in payload protos")


@pytest.mark.parametrize(
    "metrics", [{"loss": 1e300}, {"loss": 10**400}, {3: 0.5}], ids=["1e300", "10^400", "int-name"]
)
def test_metrics_of_an_absurd_magnitude_or_name_are_rejected(metrics):
    """10**400 is an int too large for a float: math.isfinite raised OverflowError."""
    result = round_with("fedavg", metrics=metrics)
    assert list(result.record["rejected"]) == [BAD]


def test_a_sparse_weight_is_rejected():
    weights = dict(bad_update("fedavg").weights)
    key = next(k for k, v in weights.items() if v.ndim == 2 or v.ndim == 4)
    weights[key] = weights[key].to_sparse()
    assert_only_bad_rejected(round_with("fedavg", weights=weights), "not a dense tensor")


# ---- relative checks: prototypes like weights, and a pair of sites ----------------------------


@pytest.mark.parametrize("clients", [2, 3])
@pytest.mark.parametrize("name", ["fedbcs", "fedproto"])
def test_prototypes_far_larger_than_the_others_are_rejected(name, clients):
    """×1000 is no absurd magnitude, but 1000× the others' prototypes."""
    result = round_with(name, clients=clients, payload=scaled_rows(name, 1000.0))
    assert_only_bad_rejected(result, "largest prototype norm in protos")


def test_the_norm_check_works_for_a_pair_of_sites():
    """With two sites the larger of two updates far apart is rejected; the check was off."""
    _, global_weights, _ = honest("fedavg")
    weights = {
        k: g + 1000 * (w - g)
        for (k, w), g in zip(
            bad_update("fedavg").weights.items(), global_weights.values(), strict=True
        )
    }
    assert_only_bad_rejected(round_with("fedavg", clients=2, weights=weights), "update norm")


# ---- example counts -------------------------------------------------------------------------


def test_a_claimed_count_is_capped_at_the_count_factor_times_the_others_median():
    result = round_with("fedavg", num_examples=10_000_000)
    others = sorted(u.num_examples for s, u in honest("fedavg")[2] if s != BAD)
    bound = math.floor(4 * (others[0] + others[1]) / 2)
    assert result.record["capped"] == {BAD: f"claimed 10000000 examples, counted {bound}"}
    assert result.aggregated == ["site-A", "site-B", "site-C"]


def test_the_cap_weighs_the_aggregate():
    """The aggregate is the count-weighted mean with site-B counted at the bound."""
    algorithm, weights, replies = honest("fedavg")
    claimed = [
        (s, dataclasses.replace(u, num_examples=10**7) if s == BAD else u) for s, u in replies
    ]
    result = aggregate_round(
        algorithm, 1, [s for s, _ in replies], claimed, {}, weights, {}, ScreeningPolicy()
    )
    counted, _ = cap_example_counts(claimed)
    expected, _ = algorithm.aggregate([u for _, u in counted], weights, {})
    for key, value in expected.items():
        assert torch.equal(result.weights[key], value), key
    assert dict(counted)[BAD].num_examples < 10**7


@pytest.mark.parametrize(
    "counts, capped",
    [
        ([36, 18, 12, 30], {}),  # synthetic-nuclei's shares: the largest is 2× the others
        ([12, 4], {}),  # its largest and smallest site alone: 3×
        ([12, 6, 10**7, 10], {"c2": "claimed 10000000 examples, counted 40"}),
        ([5, 10**7], {"c1": "claimed 10000000 examples, counted 20"}),
        ([7], {}),
    ],
)
def test_honest_counts_are_not_capped_and_a_claim_is(counts, capped):
    replies = [(f"c{i}", ClientUpdate({}, n)) for i, n in enumerate(counts)]
    counted, notes = cap_example_counts(replies)
    assert notes == capped
    assert [u.num_examples for c, u in counted if c not in capped] == [
        n for i, n in enumerate(counts) if f"c{i}" not in capped
    ]


def test_a_count_factor_of_zero_turns_the_cap_off():
    replies = [("a", ClientUpdate({}, 5)), ("b", ClientUpdate({}, 10**7))]
    assert cap_example_counts(replies, ScreeningPolicy(count_factor=0)) == (replies, {})


# ---- the aggregate -----------------------------------------------------------------------------


def test_an_aggregate_that_is_not_finite_is_never_kept():
    """Screened replies whose aggregate overflows (or a server side that fails to keep
    its result finite): the global model stays as it was and the round aggregated none."""
    algorithm, weights, replies = honest("fedbcs")

    class Overflowing(type(algorithm)):
        def aggregate_payload(self, updates, global_payload):
            payload = super().aggregate_payload(updates, global_payload)
            return payload | {"mean/encoder": payload["mean/encoder"] * float("inf")}

    overflowing = Overflowing(algorithm.config, algorithm.in_channels, algorithm.num_classes)
    old_payload = {"kept": torch.ones(1)}
    clients = [s for s, _ in replies]
    result = aggregate_round(
        overflowing, 2, clients, replies, {}, weights, old_payload, ScreeningPolicy()
    )
    assert result.weights is weights and result.payload is old_payload
    assert result.aggregated == []
    assert "non-finite values in payload mean/encoder" in result.record["discarded"]


# ---- random malformed replies: nothing escapes ---------------------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.just(10**400),
    st.floats(),
    st.text(max_size=3),
    st.lists(st.floats(), max_size=2),
    st.just(np.zeros(2)),
    st.just({}),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def broken_tensor(draw, value: torch.Tensor):
    """``value`` broken one way: another dtype, shape, scale, a NaN, sparse, or no tensor."""
    how = draw(
        st.sampled_from(["dtype", "shape", "scale", "nan", "zero", "sparse", "junk", "fewer"])
    )
    if how == "dtype":
        dtype = draw(
            st.sampled_from(
                [
                    torch.float16,
                    torch.float64,
                    torch.int64,
                    torch.bool,
                    torch.complex64,
                    torch.uint8,
                ]
            )
        )
        return value.to(dtype)
    if how == "shape":
        return value.reshape(-1)[None] if value.numel() else torch.zeros(2, 3)
    if how == "scale":
        return value * draw(FLOATS)
    if how == "nan" and value.is_floating_point() and value.numel():
        value = value.clone()
        value.view(-1)[0] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 3e38]))
        return value
    if how == "zero":
        return torch.zeros_like(value)
    if how == "sparse" and value.ndim >= 1:
        return value.to_sparse()
    if how == "fewer" and value.ndim >= 1:
        return value[:-1]
    return draw(JUNK)


@st.composite
def broken_dict(draw, tensors: dict):
    """``tensors`` with an entry or a few broken, dropped or added, or no dict at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)
    out = dict(tensors)
    keys = sorted(out)
    broken = [draw(st.sampled_from(keys))] if keys else []
    broken += draw(st.lists(st.sampled_from(keys), max_size=2)) if keys else []
    for key in broken:
        value = out.get(key)
        if draw(st.integers(0, 4)) == 0:
            out.pop(key, None)
        elif isinstance(value, torch.Tensor) and value.layout == torch.strided:
            out[key] = draw(broken_tensor(value))
        else:
            out[key] = draw(JUNK)
    if not keys or draw(st.integers(0, 5)) == 0:
        name = draw(st.one_of(st.text(max_size=4), st.integers()))
        out[name] = draw(st.one_of(JUNK, st.just(torch.zeros(2))))
    return out


FIELDS = ["weights", "payload", "num_examples", "metrics", "site"]


@st.composite
def malformed(draw, update: ClientUpdate):
    """An honest ``update`` with one of its fields broken, sometimes more."""
    fields = {draw(st.sampled_from(FIELDS)), *draw(st.lists(st.sampled_from(FIELDS), max_size=1))}
    changed = {}
    for name in fields:
        if name in ("weights", "payload"):
            changed[name] = draw(broken_dict(getattr(update, name)))
        elif name == "num_examples":
            changed[name] = draw(st.one_of(JUNK, st.integers(-(10**20), 10**20)))
        elif name == "metrics":
            metric = st.one_of(
                st.sampled_from(sorted(update.metrics)), st.text(max_size=3), st.integers()
            )
            changed[name] = draw(
                st.one_of(JUNK, st.builds(lambda k, v: update.metrics | {k: v}, metric, JUNK))
            )
        else:
            changed[name] = draw(JUNK)
    return dataclasses.replace(update, **changed)


def _finite(tensors: dict) -> bool:
    return all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


@pytest.mark.parametrize("name", ["fedbcs", "fedcontrast"])  # every kind of upload
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_malformed_replies_never_make_screening_or_the_round_raise(name, data):
    """Any of three replies may have any field broken (:func:`malformed`): screening sorts
    every client into accepted or rejected with a reason, the round never raises, and the
    global model it leaves is finite and of sane magnitude."""
    algorithm, weights, replies = honest(name)
    sent = []
    for site, update in replies:
        if data.draw(st.booleans(), label=f"{site} malformed"):
            update = data.draw(malformed(update), label=site)
        sent.append((site, update))
    clients = [site for site, _ in sent]
    accepted, rejected = screen_updates(algorithm, sent, weights, ScreeningPolicy())
    assert sorted([*(s for s, _ in accepted), *rejected]) == sorted(clients)
    assert all(isinstance(reason, str) and reason for reason in rejected.values())
    result = aggregate_round(algorithm, 1, clients, sent, {}, weights, {}, ScreeningPolicy())
    assert _finite(result.weights) and _finite(result.payload)
    floating = [v for v in result.weights.values() if v.is_floating_point() and v.numel()]
    assert all(float(v.abs().max()) <= 1e9 for v in floating)
