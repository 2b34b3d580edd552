"""Client-level differential privacy of the model weights: DP-FedAvg with fixed clipping
(McMahan et al. 2018, arXiv:1710.06963), with the semantics of Flower's
``DifferentialPrivacyServerSideFixedClipping`` (docs/privacy.md).

Unit of privacy: one site, all of its training data. Two federations are neighbours when
one has a site more (add or remove one site). A release is one round's global weights:

1. each aggregated site's update ``Δ_k = w_k − w_global``, over all its floating tensors
   together, is clipped to L2 norm ``S`` (:func:`clip_update`, Flower's
   ``compute_clip_model_update``);
2. the next global weights are ``w_global`` plus the unweighted mean of the m clipped
   updates plus Gaussian noise of standard deviation ``z·S/m`` on every entry (Flower's
   ``compute_stdv``), drawn from generators seeded by (run seed, round, tensor name).

Sensitivity. Adding or removing one site moves the sum of the clipped updates by at most
``S`` in L2, so noise ``z·S`` on the sum, ``z·S/m`` on the mean (m is public: the server
sees who replied), is a Gaussian mechanism of multiplier ``z``. Integer tensors
(counters) are not averaged: the global ones are kept, as a site's would tell its own.

Accounting: a site spends one Gaussian release of multiplier ``z`` in each round its update
is aggregated; they compose over those rounds by the RDP accountant of
:func:`~fedbcs_fl.privacy.epsilon_spent`, which is Flower's in its accounted mode (no
amplification by sampling, add or remove one site). ``weight_dp_epsilon`` solves ``z`` so
that a site aggregated in every round spends the budget.

Where this differs from Flower's wrapper, and why, is in docs/privacy.md: m is the number
of updates aggregated (Flower: the configured sample size, which under-noises a round that
lost a reply), the noise is seeded, integer tensors keep the global value, and the robust
rules and the methods' own weighting give way to the unweighted mean.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .privacy import default_delta, epsilon_spent, noise_for_epsilon, stream_seed

if TYPE_CHECKING:  # the config names the methods, whose base class imports this module
    from .config import RunConfig

# Round-record keys: site → ε spent so far on the weights, and its δ.
EPSILON_KEY = "weight_dp_epsilon"
DELTA_KEY = "weight_dp_delta"


def weight_dp_on(config: RunConfig) -> bool:
    """Whether ``config`` makes the global weights client-level differentially private."""
    return config.weight_dp_noise is not None or config.weight_dp_epsilon is not None


def check_weight_privacy_config(config: RunConfig) -> None:
    """Raise ``ValueError`` naming the weight-DP setting of ``config`` that is invalid
    (each setting's own range is checked where it is declared)."""
    if not weight_dp_on(config):
        return
    if config.weight_dp_noise is not None and config.weight_dp_epsilon is not None:
        raise ValueError(
            "give weight_dp_epsilon (the budget, noise solved for it) or weight_dp_noise "
            f"(the noise multiplier), not both; got {config.weight_dp_epsilon} and "
            f"{config.weight_dp_noise}"
        )
    if config.aggregation != "mean":
        raise ValueError(
            f"weight DP averages the clipped updates: aggregation must be mean, got "
            f"{config.aggregation!r}"
        )


def clip_update(
    weights: dict[str, torch.Tensor], global_weights: dict[str, torch.Tensor], clip: float
) -> dict[str, torch.Tensor]:
    """``global + Δ·min(1, clip/‖Δ‖)``, ``Δ = weights − global`` over every floating tensor
    together (Flower's ``compute_clip_model_update``); integer tensors are the global ones.
    """
    from flwr.supercore.differential_privacy import compute_clip_model_update

    keys = [key for key, value in global_weights.items() if value.is_floating_point()]
    if all(torch.equal(weights[key], global_weights[key]) for key in keys):
        return dict(global_weights)  # nothing to clip (Flower's helper divides by the norm)
    local = [weights[key].numpy() for key in keys]
    reference = [global_weights[key].numpy() for key in keys]
    compute_clip_model_update(local, reference, clip)  # replaces local's entries
    clipped = {key: torch.from_numpy(array) for key, array in zip(keys, local, strict=True)}
    return {key: clipped.get(key, value) for key, value in global_weights.items()}


@dataclass(frozen=True)
class WeightPrivacy:
    """The run's weight mechanism in one round.

    Args:
        noise_multiplier: z, the noise on the sum of clipped updates over ``clip``.
        clip: S, the bound on each site's update.
        delta: δ of the ε reported.
        seed: the run's seed; with ``round`` it seeds the noise.
        round: the round, from 1.
    """

    noise_multiplier: float
    clip: float
    delta: float
    seed: int
    round: int

    def noise_std(self, aggregated: int) -> float:
        """``z·S/m`` for m = ``aggregated`` updates (Flower's ``compute_stdv``)."""
        from flwr.supercore.differential_privacy import compute_stdv

        return compute_stdv(self.noise_multiplier, self.clip, aggregated)

    def aggregate(
        self, states: Sequence[dict[str, torch.Tensor]], global_weights: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The next global weights: the unweighted mean of ``states`` clipped around
        ``global_weights``, plus the noise, in float64, returned in each tensor's dtype.

        Each tensor's noise comes from a CPU generator seeded by (run seed, round, its
        name): the same in a rerun, a resumed run and either engine, whatever the order of
        the tensors.
        """
        clipped = [clip_update(state, global_weights, self.clip) for state in states]
        std = self.noise_std(len(states))
        out = {}
        for key, reference in global_weights.items():
            if not reference.is_floating_point():
                out[key] = reference.clone()
                continue
            total = torch.zeros(reference.shape, dtype=torch.float64)
            for state in clipped:
                total += state[key].to(torch.float64)
            generator = torch.Generator().manual_seed(
                stream_seed("weight-dp", self.seed, self.round, key)
            )
            noise = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
            out[key] = (total / len(states) + std * noise).to(reference.dtype)
        return out

    def spent(self, records: Sequence[dict]) -> dict:
        """The round-record fields of the ε spent after ``records`` (this run's, the last
        one this round's): per site whose update was aggregated in any of them, the ε of
        one release per such round at :attr:`delta`, and that δ."""
        releases = Counter(site for record in records for site in record["aggregated"])
        epsilons = {site: self.epsilon(count) for site, count in sorted(releases.items())}
        return {EPSILON_KEY: epsilons, DELTA_KEY: self.delta}

    def epsilon(self, releases: int) -> float:
        """ε of ``releases`` rounds at :attr:`delta`; infinite without noise."""
        if self.noise_multiplier == 0 and releases:
            return math.inf
        return epsilon_spent(self.noise_multiplier, releases, self.delta)


def weight_privacy(config: RunConfig, sites: int, round_index: int) -> WeightPrivacy | None:
    """The weight mechanism of round ``round_index`` of a federation of ``sites`` sites;
    None when weight DP is off.

    δ is ``dp_delta``, or :func:`~fedbcs_fl.privacy.default_delta` of the sites. With
    ``weight_dp_epsilon`` the noise is solved for ``rounds`` releases.
    """
    if not weight_dp_on(config):
        return None
    delta = config.dp_delta if config.dp_delta is not None else default_delta(sites)
    noise = config.weight_dp_noise
    if noise is None:
        noise = noise_for_epsilon(config.weight_dp_epsilon, delta, config.rounds)
    return WeightPrivacy(noise, config.weight_dp_clip, delta, config.seed, round_index)


def weight_privacy_statement(config: RunConfig, records: list[dict]) -> str:
    """What summary.md says of the run's weight DP: each site's final (ε, δ) and what it
    covers; "" when it was off."""
    if not weight_dp_on(config) or not records:
        return ""
    last = records[-1]
    delta = last[DELTA_KEY]
    spent = ", ".join(f"{site} ε = {e:.3g}" for site, e in last[EPSILON_KEY].items())
    budget = (
        f"budget ε = {config.weight_dp_epsilon:g}"
        if config.weight_dp_epsilon is not None
        else f"noise multiplier {config.weight_dp_noise:g}"
    )
    return (
        f"Client-level differential privacy of the weights (DP-FedAvg, {budget}, clip "
        f"S = {config.weight_dp_clip:g}; RDP accountant over the rounds each site's update "
        f"was aggregated in, no amplification by sampling): "
        f"{spent or 'no release recorded'}, at δ = {delta:.3g}. It covers a whole site's "
        "contribution to the global weights, not its prototypes, metrics or example counts, "
        "and not from the server, which sees each update (docs/privacy.md)."
    )
