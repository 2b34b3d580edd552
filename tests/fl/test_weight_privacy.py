"""Client-level DP of the weights (fedbcs_fl/weight_privacy.py, docs/privacy.md): the clip
bounds each site's influence, the noise is what is asked, ε grows with the rounds a site
takes part in, the settings' errors, and runs that draw the same noise again, after a
resume too, and docs/privacy.md's commands. Against Flower's own wrapper, and the Flower
engine: tests/flower."""

import dataclasses
import itertools
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from flwr.serverapp import GaussianPrivacyEvent, PrivacyConfig, RdpAccountant
from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.cli import build_parser, config_from_args
from fedbcs_fl.compare import expand_methods
from fedbcs_fl.privacy import noise_for_epsilon
from fedbcs_fl.round import aggregate_round
from fedbcs_fl.run_folder import write_run_summary
from fedbcs_fl.screening import ScreeningPolicy
from fedbcs_fl.simulation import Simulation
from fedbcs_fl.weight_privacy import (
    WeightPrivacy,
    clip_update,
    weight_privacy,
    weight_privacy_statement,
)
from tests._tiny import round_one_replies, tiny_config, tiny_sites

GLOBAL = {
    "conv.weight": torch.zeros(4, 3),
    "norm.bias": torch.ones(5),
    "steps": torch.tensor(7),  # an integer counter: never averaged
}


def _state(scale: float, seed: int) -> dict[str, torch.Tensor]:
    """The global weights moved by a random update of L2 norm ``scale``, and another count."""
    gen = torch.Generator().manual_seed(seed)
    moves = {k: torch.randn(v.shape, generator=gen) for k, v in GLOBAL.items() if k != "steps"}
    norm = math.sqrt(sum(float(m.pow(2).sum()) for m in moves.values()))
    state = {k: GLOBAL[k] + scale * m / norm for k, m in moves.items()}
    return state | {"steps": torch.tensor(100 + seed)}


def _norm(state: dict, reference: dict) -> float:
    keys = [k for k, v in reference.items() if v.is_floating_point()]
    return math.sqrt(sum(float((state[k] - reference[k]).double().pow(2).sum()) for k in keys))


def _mechanism(noise: float = 0.0, clip: float = 0.5, round_index: int = 1, seed: int = 0):
    return WeightPrivacy(noise, clip, delta=1e-3, seed=seed, round=round_index)


@pytest.mark.parametrize("removed", [0, 1, 3])
def test_the_clip_bounds_what_one_site_moves_the_sum_by(removed):
    clip = 0.5
    states = [_state(scale, seed) for seed, scale in enumerate([3.0, 0.2, 40.0, 0.5])]
    kept = [s for i, s in enumerate(states) if i != removed]
    mechanism = _mechanism(clip=clip)
    with_all = mechanism.aggregate(states, GLOBAL)
    without = mechanism.aggregate(kept, GLOBAL)
    # The sum of the clipped updates, m × (mean − global), moves by the site's clipped update.
    moved = {
        k: len(states) * (with_all[k] - GLOBAL[k]) - len(kept) * (without[k] - GLOBAL[k])
        for k in ("conv.weight", "norm.bias")
    }
    shift = _norm({k: GLOBAL[k] + v for k, v in moved.items()}, GLOBAL)
    assert shift == pytest.approx(min(clip, _norm(states[removed], GLOBAL)), rel=1e-5)
    for state in states:
        assert _norm(clip_update(state, GLOBAL, clip), GLOBAL) <= clip * (1 + 1e-6)
    assert with_all["steps"] == GLOBAL["steps"]  # no site's count leaks into the model


def test_an_update_within_the_clip_and_a_site_that_did_not_move_are_kept_as_sent():
    small = _state(0.1, 0)
    assert all(
        torch.equal(clip_update(small, GLOBAL, 0.5)[k], small[k]) for k in GLOBAL if k != "steps"
    )
    assert all(torch.equal(clip_update(GLOBAL, GLOBAL, 0.5)[k], GLOBAL[k]) for k in GLOBAL)


def test_the_noise_has_the_standard_deviation_asked_for():
    noise, clip, sites = 1.5, 0.2, 4
    reference = {"w": torch.zeros(200_000)}
    mechanism = _mechanism(noise=noise, clip=clip)
    out = mechanism.aggregate([reference] * sites, reference)["w"]
    assert mechanism.noise_std(sites) == noise * clip / sites
    assert out.std().item() == pytest.approx(noise * clip / sites, rel=0.01)
    assert abs(out.mean().item()) < 5 * out.std().item() / math.sqrt(out.numel())


def _records(*aggregated: list[str]) -> list[dict]:
    return [{"round": r, "aggregated": sites} for r, sites in enumerate(aggregated, start=1)]


def test_epsilon_grows_with_the_rounds_a_site_is_aggregated_in():
    mechanism = _mechanism(noise=1.2)
    rounds = _records(*[["site-A", "site-B"]] * 6, ["site-A"], [])
    spent = [mechanism.spent(rounds[:n])["weight_dp_epsilon"] for n in range(1, len(rounds) + 1)]
    site_a = [s["site-A"] for s in spent]
    assert all(a < b for a, b in itertools.pairwise(site_a[:7])) and site_a[7] == site_a[6]
    assert spent[-1]["site-B"] == spent[5]["site-B"] < spent[-1]["site-A"]
    # The accountant is Flower's in its accounted mode: no amplification, add or remove a site.
    flower = RdpAccountant(
        PrivacyConfig(
            target_delta=1e-3,
            population_size=2,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    flower.compose(GaussianPrivacyEvent(1.2, sample_size=2, population_size=2), count=7)
    assert site_a[-1] == pytest.approx(flower.get_epsilon(1e-3), rel=1e-12)
    assert _mechanism(noise=0.0).spent(rounds[:1])["weight_dp_epsilon"]["site-A"] == math.inf
    assert _mechanism(noise=1.2).spent([])["weight_dp_epsilon"] == {}


def test_the_budget_solves_the_noise_for_every_round():
    config = tiny_config("fedavg", weight_dp_epsilon=4.0, dp_delta=1e-3, rounds=5)
    mechanism = weight_privacy(config, sites=2, round_index=1)
    assert mechanism.noise_multiplier == noise_for_epsilon(4.0, 1e-3, 5)
    assert mechanism.epsilon(5) == pytest.approx(4.0, rel=1e-3)
    default = weight_privacy(tiny_config("fedavg", weight_dp_noise=1.0), sites=4, round_index=1)
    assert default.delta == 1 / 40  # 1/(10·N) for N sites


def test_the_noise_depends_on_seed_and_round_only():
    states = [_state(1.0, 1), _state(2.0, 2)]

    def draw(**changes):
        fields = {"noise": 1.0, "seed": 0, "round_index": 2} | changes
        return _mechanism(**fields).aggregate(states, GLOBAL)["conv.weight"]

    torch.manual_seed(1)
    first = draw()
    torch.manual_seed(2)  # the global generator plays no part
    assert torch.equal(first, draw())
    reordered = dict(reversed(GLOBAL.items()))  # nor the order of the tensors
    assert torch.equal(
        first, _mechanism(1.0, round_index=2).aggregate(states, reordered)["conv.weight"]
    )
    for change in ({"seed": 1}, {"round_index": 3}):
        assert not torch.equal(first, draw(**change)), change


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weight_dp_noise": -1.0}, "weight_dp_noise must be in [0, inf); got -1.0"),
        ({"weight_dp_noise": math.nan}, "weight_dp_noise must be in [0, inf)"),
        ({"weight_dp_epsilon": 0.0}, "weight_dp_epsilon must be in (0, inf); got 0.0"),
        ({"weight_dp_noise": 1.0, "weight_dp_clip": 0.0}, "weight_dp_clip must be in (0, inf)"),
        ({"weight_dp_noise": 1.0, "weight_dp_clip": -2.0}, "weight_dp_clip must be in (0, inf)"),
        ({"weight_dp_noise": 1.0, "weight_dp_epsilon": 1.0}, "not both"),
        ({"weight_dp_noise": 1.0, "aggregation": "median"}, "aggregation must be mean"),
    ],
)
def test_bad_weight_privacy_settings_are_errors(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_algorithm(tiny_config("fedavg", **fields))


def test_norm_screening_gives_way_to_the_clip():
    assert ScreeningPolicy.of(tiny_config("fedavg", weight_dp_noise=1.0)).norm_factor == 0
    assert ScreeningPolicy.of(tiny_config("fedavg")).norm_factor == 10


def test_a_round_replaces_the_methods_weighting_by_the_private_mean_and_records_epsilon():
    """FedAvg weighs by example counts; under weight DP every site counts once."""
    config = tiny_config("fedavg", weight_dp_noise=0.0, weight_dp_clip=1e6)
    algorithm = build_algorithm(config)
    weights, replies = round_one_replies(algorithm, clients=2)
    replies[0][1].num_examples = 1000
    mechanism = weight_privacy(config, sites=2, round_index=1)
    earlier = _records(["site-A"])
    result = aggregate_round(
        algorithm,
        1,
        ["site-A", "site-B"],
        replies,
        {},
        weights,
        {},
        ScreeningPolicy.of(config),
        weight_privacy=mechanism,
        history=earlier,
    )
    for key, value in weights.items():
        mean = (replies[0][1].weights[key].double() + replies[1][1].weights[key].double()) / 2
        torch.testing.assert_close(result.weights[key], mean.to(value.dtype), rtol=0, atol=1e-6)
    assert result.record["weight_dp_epsilon"] == {"site-A": math.inf, "site-B": math.inf}
    assert result.record["weight_dp_delta"] == 1 / 20
    statement = weight_privacy_statement(config, [*earlier, result.record])
    assert "noise multiplier 0, clip S = 1e+06" in statement and "site-B ε = inf" in statement
    assert "whole site's contribution to the global weights" in statement


def _private_run(rounds: int, out=None, resume: bool = False):
    config = tiny_config("fedavg", rounds=rounds, weight_dp_noise=0.8, weight_dp_clip=0.5)
    simulation = Simulation(config, tiny_sites(2), out_dir=out, progress=False)
    if resume:
        simulation.resume()
    return simulation, simulation.run()


@pytest.mark.e2e
def test_a_private_run_records_epsilon_and_resumes_bit_for_bit(tmp_path):
    whole, history = _private_run(2)
    spent = [record["weight_dp_epsilon"]["site-A"] for record in history]
    two_rounds = weight_privacy(whole.config, sites=2, round_index=2).epsilon(2)
    assert 0 < spent[0] < spent[1] == two_rounds
    _private_run(1, tmp_path)
    resumed, resumed_history = _private_run(2, tmp_path, resume=True)
    for key, value in whole.global_weights.items():
        assert torch.equal(resumed.global_weights[key], value), key
    assert resumed_history[-1]["weight_dp_epsilon"] == history[-1]["weight_dp_epsilon"]
    write_run_summary(tmp_path, resumed.config, resumed_history)
    summary = (tmp_path / "summary.md").read_text()
    assert f"site-A ε = {spent[1]:.3g}, site-B ε = {spent[1]:.3g}, at δ = 0.05" in summary


def _documented_commands() -> list[list[str]]:
    """Every ``fedbcs`` command of docs/privacy.md's bash blocks, ``$eps`` as 8."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "privacy.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("#")[0].strip().replace("$eps", "8")
            if line.startswith("fedbcs "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_documented_commands_are_valid():
    """The privacy–utility curve is not run here: its commands must still be right."""
    commands = _documented_commands()
    assert len(commands) >= 6
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        config = config_from_args(args)
        for method in expand_methods(args.methods) if argv[0] == "compare" else [config.method]:
            build_algorithm(dataclasses.replace(config, method=method, method_options={}))
