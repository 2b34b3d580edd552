"""Each fault: the round completes, the global model is finite and equals the aggregate of
the honest clients, and the fault is in the metrics. A prototype drill runs for every
method that uploads prototypes, and is refused, when it is read, for every other.

The drill grammar (``CLIENT:KIND[=VALUE]@ROUNDS``) and the attack drills of issue 15: a
reversed step with an inflated count (take-over), prototypes scaled by 1e18 (stall), a
spoofed site name, garbage, and a federation that stalls."""

import dataclasses

import pytest
import torch

from fedbcs_fl.algorithms import METHODS
from fedbcs_fl.cli import main
from fedbcs_fl.faults import GARBAGE, PROTOTYPE_KINDS, VALUE_KINDS, FaultInjector, parse_faults
from fedbcs_fl.identity import Enrolment
from fedbcs_fl.payload import prototype_sets
from fedbcs_fl.round import FederationStalled, aggregate_round
from fedbcs_fl.screening import ScreeningPolicy
from fedbcs_fl.simulation import Simulation

from .._tiny import (
    prototype_methods,
    round_one_replies,
    tiny_algorithm,
    tiny_argv,
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
        ("spoof=site-A", "rejected"),
        ("garbage", "rejected"),
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
def test_the_norm_check_works_for_two_clients(sites):
    """With two sites the check was off, and ×1000 (or ×1e30) weights were aggregated."""
    sim = Simulation(tiny_config(inject_faults=f"{FAULTY}:scaled@1"), sites[:2], progress=False)
    record = sim.run_round(1)
    assert "update norm" in record["rejected"][FAULTY] and record["aggregated"] == ["site-A"]


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


# ---- the drill grammar: CLIENT:KIND[=VALUE]@ROUNDS ----------------------------------------

SITES = ["site-A", "site-B", "site-C", "site-D"]


def test_rounds_are_one_round_a_range_or_every_round():
    faults = parse_faults(
        "site-A:nan@2, site-B:raise@3-5,site-C:reverse=5@*,site-D:claim=100@1",
        tiny_algorithm("fedavg"),
        SITES,
    )
    assert [(f.client, f.kind, f.value, f.first, f.last) for f in faults] == [
        ("site-A", "nan", None, 2, 2),
        ("site-B", "raise", None, 3, 5),
        ("site-C", "reverse", 5.0, 1, None),
        ("site-D", "claim", 100, 1, 1),
    ]
    in_rounds = {r for r in range(1, 9) if faults[1].applies("site-B", r)}
    assert in_rounds == {3, 4, 5} and not faults[1].applies("site-A", 4)
    assert all(faults[2].applies("site-C", r) for r in (1, 2, 1000))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("site-X:nan@1", "names 'site-X', not a client of this run; clients: site-A, site-B"),
        ("site-B:spoof=site-X@1", "names 'site-X', not a client of this run"),
        ("site-B:reverse@1", "reverse needs a value, reverse=F"),
        ("site-B:nan=3@1", "nan takes no value"),
        ("site-B:reverse=fast@1", "F must be a finite float"),
        ("site-B:reverse=inf@1", "F must be a finite float"),
        ("site-B:claim=1e7@1", "N must be a finite int"),
        ("site-B:nan@5-3", "rounds must be A-B with 1 ≤ A ≤ B"),
        ("site-B:nan@0", "rounds must be A-B with 1 ≤ A ≤ B"),
        ("site-B:nan@two", "use CLIENT:KIND[=VALUE]@ROUNDS"),
        ("site-B:explode@1", "unknown fault kind 'explode'"),
    ],
)
def test_a_drill_that_cannot_run_is_an_error_naming_why(spec, message):
    with pytest.raises(ValueError) as error:
        parse_faults(spec, tiny_algorithm("fedavg"), SITES)
    assert message in str(error.value)


def test_the_simulator_refuses_a_drill_for_an_unknown_client_before_training():
    config = tiny_config("fedavg", inject_faults="site-Z:nan@1")
    with pytest.raises(ValueError, match="names 'site-Z', not a client of this run"):
        Simulation(config, sites=[], progress=False)


# ---- the attack drills, on one round's replies ------------------------------------------------


@pytest.fixture(scope="module")
def round_one():
    """``{method: (algorithm, global weights, replies)}`` of round 1 for three clients."""
    out = {}
    for name in ("fedavg", "fedbcs"):
        algorithm = tiny_algorithm(name)
        out[name] = (algorithm, *round_one_replies(algorithm))
    return out


def _drilled(round_one, name: str, drill: str, round_index: int = 1, seed: int = 0):
    algorithm, weights, replies = round_one[name]
    injector = FaultInjector(f"{FAULTY}:{drill}", algorithm, seed=seed)
    return dict(
        (site, injector.corrupt(site, round_index, update, weights)) for site, update in replies
    )


def test_reverse_sends_the_global_weights_minus_f_times_the_own_step(round_one):
    _, weights, replies = round_one["fedavg"]
    sent = _drilled(round_one, "fedavg", "reverse=5@1")[FAULTY].weights
    own = dict(replies)[FAULTY].weights
    for key, value in weights.items():
        expected = value - 5 * (own[key] - value) if value.is_floating_point() else own[key]
        assert torch.equal(sent[key], expected), key


def test_claim_scale_protos_and_spoof_change_what_they_say(round_one):
    _, _, replies = round_one["fedbcs"]
    own = dict(replies)[FAULTY]
    assert _drilled(round_one, "fedbcs", "claim=10000000@1")[FAULTY].num_examples == 10**7
    assert _drilled(round_one, "fedbcs", "spoof=site-A@1")[FAULTY].site == "site-A"
    scaled = _drilled(round_one, "fedbcs", "scale_protos=1e18@1")[FAULTY].payload
    for stream in ("encoder", "decoder"):
        key = f"protos/{stream}"
        assert torch.equal(scaled[key], own.payload[key] * 1e18)
    untouched = _drilled(round_one, "fedbcs", "claim=3@2")[FAULTY]
    assert untouched.num_examples == own.num_examples  # round 2 only


@pytest.mark.parametrize("name", ["fedavg", "fedbcs"])
@pytest.mark.parametrize("entry", list(GARBAGE))
def test_every_garbage_reply_is_refused_or_rejected_with_a_reason(round_one, name, entry):
    """Each malformed field of the list: the engine refuses it (a site that is no name) or
    screening rejects it, and the round aggregates exactly the honest others."""
    algorithm, weights, replies = round_one[name]
    needs_prototypes, garbage = GARBAGE[entry]
    if needs_prototypes and not prototype_sets(algorithm.uploads):
        pytest.skip(f"{name} uploads no prototypes")
    update = dict(replies)[FAULTY]
    update = dataclasses.replace(update, **garbage(update, prototype_sets(algorithm.uploads)))
    _, refused = Enrolment({FAULTY: FAULTY}).admit(FAULTY, update.site)
    if refused:
        assert entry == "site-a-number"
        return
    sent = [(site, update if site == FAULTY else u) for site, u in replies]
    clients = [site for site, _ in replies]
    result = aggregate_round(algorithm, 1, clients, sent, {}, weights, {}, ScreeningPolicy())
    assert list(result.record["rejected"]) == [FAULTY], result.record
    honest = [u for site, u in replies if site != FAULTY]
    expected_weights, _ = algorithm.aggregate(honest, weights, {})
    _assert_equal(result.weights, expected_weights)


def test_garbage_is_drawn_from_the_seed_client_and_round(round_one):
    def drawn(round_index, seed):
        return _drilled(round_one, "fedbcs", "garbage@*", round_index, seed)[FAULTY]

    def fields(update):
        return repr(dataclasses.asdict(update))

    assert fields(drawn(1, 0)) == fields(drawn(1, 0))
    assert len({fields(drawn(r, s)) for r in range(1, 6) for s in range(3)}) > 3


# ---- whole runs: take-over, stall ------------------------------------------------------------

TAKE_OVER = f"{FAULTY}:reverse=5@*,{FAULTY}:claim=10000000@*"


@pytest.mark.e2e
def test_a_claimed_count_no_longer_makes_a_site_the_whole_mean(sites):
    """Counted at most 4× the median of the others, site-B is no longer nearly all of the
    count-weighted mean (it was 10⁷ of 10⁷ + 32 examples)."""
    sim = Simulation(tiny_config(inject_faults=TAKE_OVER), sites, progress=False)
    record = sim.run_round(1)
    assert record["capped"] == {FAULTY: "claimed 10000000 examples, counted 40"}
    assert record["aggregated"] == [s.name for s in sites]


@pytest.mark.e2e
@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum"])
def test_a_robust_rule_keeps_the_take_over_inside_the_honest_updates(sites, rule):
    """G − 5·(own step) with 10⁷ examples passes screening (5× is inside the norm bound);
    under a robust rule it cannot move any coordinate outside the honest clients' values
    (Krum: it keeps one honest client's weights)."""
    config = tiny_config(inject_faults=TAKE_OVER, aggregation=rule)
    sim = Simulation(config, sites, progress=False)
    for round_index in (1, 2):
        before = sim.global_weights
        record = sim.run_round(round_index)
        assert FAULTY in record["aggregated"]
        honest = [u.weights for site, u in sim.last_replies if site != FAULTY]
        for key, value in sim.global_weights.items():
            if not before[key].is_floating_point():
                continue
            stacked = torch.stack([w[key] for w in honest])
            if rule == "krum":
                assert any(torch.equal(value, w[key]) for w in honest), key
            else:
                assert bool((value >= stacked.min(0).values).all()), key
                assert bool((value <= stacked.max(0).values).all()), key


@pytest.mark.e2e
def test_prototypes_scaled_by_1e18_no_longer_stall_the_federation(sites):
    """They passed screening (finite), the global prototypes reached 1e19 and every honest
    client failed from then on: now they are rejected and the others go on."""
    config = tiny_config("fedbcs", rounds=3, inject_faults=f"{FAULTY}:scale_protos=1e18@1")
    sim = Simulation(config, sites, progress=False)
    first, *later = sim.run()
    assert "absurd magnitude in payload protos/encoder" in first["rejected"][FAULTY]
    for record in later:
        assert record["faults"] == {} and len(record["aggregated"]) == 4
    rows = [v for v in sim.global_payload.values() if v.is_floating_point() and v.numel()]
    assert rows and all(float(v.abs().max()) < 1e3 for v in rows)


STALL = ",".join(f"{s}:garbage@2-9" for s in SITES)


@pytest.mark.e2e
def test_a_federation_with_nothing_aggregated_for_stall_rounds_stops_with_an_error(sites):
    config = tiny_config(rounds=5, stall_rounds=2, inject_faults=STALL)
    sim = Simulation(config, sites, progress=False)
    with pytest.raises(FederationStalled, match="no reply was aggregated in the last 2 rounds"):
        sim.run()
    assert [r["round"] for r in sim.history] == [1, 2, 3]
    assert [bool(r["aggregated"]) for r in sim.history] == [True, False, False]


@pytest.mark.e2e
def test_fedbcs_train_exits_non_zero_when_the_federation_stalls(tmp_path, capsys):
    argv = ["train", *tiny_argv("fedavg", rounds=5), "--quiet", "--out", str(tmp_path / "run")]
    assert main([*argv, "--stall-rounds", "2", "--inject-faults", STALL]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "the federation stalled" in error[0], error
    assert "round 3" in error[0] and "site-A: " in error[0]
