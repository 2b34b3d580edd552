"""Each fault: the round completes, the global model is finite and equals the aggregate of
the honest clients, and the fault is in the metrics. A prototype drill runs for every
method that uploads prototypes, and is refused, when it is read, for every other."""

import pytest
import torch

from fedbcs_fl.algorithms import METHODS
from fedbcs_fl.faults import PROTOTYPE_KINDS, VALUE_KINDS, FaultInjector, parse_faults
from fedbcs_fl.payload import prototype_sets
from fedbcs_fl.round import aggregate_round
from fedbcs_fl.screening import ScreeningPolicy
from fedbcs_fl.simulation import Simulation

from .._tiny import (
    prototype_methods,
    round_one_replies,
    tiny_algorithm,
    tiny_config,
    tiny_sites,
)

FAULTY = "site-B"


@pytest.fixture(scope="module")
def sites():
    return tiny_sites()


def _two_rounds(config, sites):
    sim = Simulation(config, sites, progress=False)
    sim.run_round(1)
    record = sim.run_round(2)
    return sim, record


@pytest.fixture(scope="module")
def honest_round2(sites):
    """Round-2 replies of a fault-free run, per method: what honest clients send."""
    replies = {}
    for method in ("fedavg", "fedbcs"):
        sim, _ = _two_rounds(tiny_config(method), sites)
        replies[method] = sim.last_replies
    return replies


def _expected(sim, honest):
    kept = [u for name, u in honest if name != FAULTY]
    return sim.algorithm.aggregate(kept, {}, {})


def _assert_equal(actual: dict, expected: dict):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.mark.e2e
@pytest.mark.parametrize(
    "kind, where",
    [
        ("raise", "faults"),
        ("raise_mid_round", "faults"),
        ("dropout", "faults"),
        ("nan", "rejected"),
        ("inf", "rejected"),
        ("missing_key", "rejected"),
        ("extra_key", "rejected"),
        ("wrong_shape", "rejected"),
        ("wrong_dtype", "rejected"),
        ("zero_examples", "rejected"),
        ("huge_examples", "rejected"),
        ("scaled", "rejected"),
    ],
)
def test_weight_faults(sites, honest_round2, kind, where):
    sim, record = _two_rounds(tiny_config(inject_faults=f"{FAULTY}:{kind}@2"), sites)
    assert FAULTY in record[where], record
    assert FAULTY not in record["aggregated"] and len(record["aggregated"]) == 3
    assert all(torch.isfinite(v).all() for v in sim.global_weights.values())
    weights, _ = _expected(sim, honest_round2["fedavg"])
    _assert_equal(sim.global_weights, weights)
    assert "mean_dice" in record


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["proto_nan", "bad_proto_dim"])
def test_prototype_faults(sites, honest_round2, kind):
    sim, record = _two_rounds(tiny_config("fedbcs", inject_faults=f"{FAULTY}:{kind}@2"), sites)
    assert FAULTY in record["rejected"]
    weights, payload = _expected(sim, honest_round2["fedbcs"])
    _assert_equal(sim.global_weights, weights)
    _assert_equal(sim.global_payload, payload)


@pytest.mark.e2e
def test_timeout(sites, honest_round2):
    config = tiny_config(inject_faults=f"{FAULTY}:timeout@2", client_timeout=1.5)
    sim, record = _two_rounds(config, sites)
    assert "timed out" in record["faults"][FAULTY]
    weights, _ = _expected(sim, honest_round2["fedavg"])
    _assert_equal(sim.global_weights, weights)


@pytest.mark.e2e
def test_no_reply_accepted_keeps_the_global_model(sites):
    faults = ",".join(f"{s.name}:raise@2" for s in sites)
    kept = {}
    sim = Simulation(
        tiny_config(inject_faults=faults),
        sites,
        progress=False,
        on_round=lambda r: kept.setdefault(r["round"], dict(sim.global_weights)),
    )
    record = sim.run()[-1]
    assert record["aggregated"] == [] and len(record["faults"]) == 4
    _assert_equal(kept[2], kept[1])
    assert all(torch.isfinite(v).all() for v in kept[2].values())
    assert "round 2: site-A fault: raised RuntimeError" in sim.fault_summary()


@pytest.mark.e2e
def test_norm_check_is_off_for_two_clients(sites):
    sim = Simulation(tiny_config(inject_faults=f"{FAULTY}:scaled@1"), sites[:2], progress=False)
    record = sim.run_round(1)
    assert record["rejected"] == {} and FAULTY in record["aggregated"]


def test_bad_fault_spec():
    fedavg = tiny_algorithm("fedavg")
    with pytest.raises(ValueError, match="unknown fault kind 'explode'"):
        parse_faults("site-A:explode@1", fedavg)
    with pytest.raises(ValueError, match=r"CLIENT:KIND\[=VALUE\]@ROUNDS"):
        parse_faults("site-A-nan", fedavg)


# ---- the prototype drills, for every method that uploads prototypes ---------------------

PROTOTYPE_METHODS = prototype_methods()
NO_PROTOTYPES = [
    *(pytest.param(name, {}, id=name) for name in METHODS if name not in PROTOTYPE_METHODS),
    pytest.param("fedbcs", {"cdpa": False}, id="fedbcs-no-cdpa"),
]


@pytest.mark.parametrize("kind", PROTOTYPE_KINDS)
@pytest.mark.parametrize("name", PROTOTYPE_METHODS)
def test_prototype_drills_run_for_every_prototype_method(name, kind):
    """The drill corrupts the prototypes the method declares; screening rejects the drilled
    site, and the round aggregates exactly the honest others."""
    algorithm = tiny_algorithm(name)
    weights, replies = round_one_replies(algorithm)
    drill = f"{kind}=1000" if kind in VALUE_KINDS else kind
    injector = FaultInjector(f"{FAULTY}:{drill}@1", algorithm)
    drilled = [(site, injector.corrupt(site, 1, update, weights)) for site, update in replies]
    clients = [site for site, _ in replies]
    result = aggregate_round(algorithm, 1, clients, drilled, {}, weights, {}, ScreeningPolicy())
    assert list(result.record["rejected"]) == [FAULTY], result.record["rejected"]
    assert prototype_sets(algorithm.uploads)[0].rows in result.record["rejected"][FAULTY]
    assert result.aggregated == [site for site in clients if site != FAULTY]
    honest = [update for site, update in replies if site != FAULTY]
    expected_weights, expected_payload = algorithm.aggregate(honest, weights, {})
    _assert_equal(result.weights, expected_weights)
    _assert_equal(result.payload, expected_payload)


@pytest.mark.parametrize("kind", PROTOTYPE_KINDS)
@pytest.mark.parametrize("name, options", NO_PROTOTYPES)
def test_a_prototype_drill_for_a_method_without_prototypes_is_refused_when_read(
    name, options, kind
):
    with pytest.raises(ValueError, match=f"'{kind}' corrupts uploaded prototypes.*{name}"):
        parse_faults(f"{FAULTY}:{kind}@2", tiny_algorithm(name, **options))


def test_the_simulator_refuses_such_a_drill_before_building_a_model():
    config = tiny_config("fedavg", inject_faults=f"{FAULTY}:proto_nan@2")
    with pytest.raises(ValueError, match="fedavg uploads none"):
        Simulation(config, sites=[], progress=False)
