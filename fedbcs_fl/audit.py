"""An empirical audit of prototype DP: how well one site's uploaded prototypes reveal one
image (``fedbcs audit-privacy``, docs/privacy.md).

A canary, the site's first training image with its intensities inverted, is added to the
site's training set ("in") or not ("out"). The site's client code
(:func:`~fedbcs_fl.client.local_train`) runs once per world from one frozen model (the
round-1 global model at a learning rate of 0: the guarantee is about the prototypes given
the model the site computes them with), its batches in a fixed order and the canary in a
batch of its own, so that everything but the canary is the same in both worlds: the
adversary's best case. What the mechanism is given to release is kept; each trial is one
draw of the mechanism on it (:func:`~fedbcs_fl.algorithms._protos.released_prototypes`),
seeded as a round of its own. Without DP the release is what the client sends.

The first half of each world's trials fits a membership test: the release projected onto
the direction the canary moves it, and the threshold that proves most on those trials.
The held-out half gives its true- and false-positive rates, and their Clopper–Pearson
intervals a lower bound on the ε of any mechanism with those rates (Kairouz et al. 2015;
Jagielski et al. 2020):

    ε ≥ max( log((TPR_lo − δ) / FPR_hi), log((1 − FPR_hi − δ) / (1 − TPR_lo)) ),

each rate bounded at ``confidence`` two-sided, so that both bounds hold together with at
least that confidence. Without DP the canary shows in every release; with DP the bound
must stay below the accountant's ε of one round's releases, what a trial releases.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from .algorithms import build_algorithm
from .algorithms._protos import released_prototypes
from .algorithms.base import Algorithm
from .client import local_train, model_weights
from .config import RunConfig
from .data.base import SiteData
from .payload import prototype_sets
from .privacy import (
    PrototypePrivacy,
    default_delta,
    epsilon_spent,
    prototype_privacy,
)

# What the audit runs where its command line does not say: a tiny model on small images,
# so that it takes seconds on a CPU, and a budget for the DP arm.
AUDIT_DEFAULTS = {"image_size": 32, "init_features": 8, "n_train": 8, "n_test": 1}
AUDIT_EPSILON = 8.0


@dataclass(frozen=True)
class AuditArm:
    """The audit of one mechanism: DP off or on.

    Args:
        name: ``"off"`` or ``"on"``.
        noise_multiplier: z of the prototype mechanism (None: off).
        delta: δ of the bound and of the accounted ε.
        accounted_epsilon: the accountant's ε of one round's releases, what one trial
            releases (inf without DP).
        budget_epsilon: the run's total ``proto_dp_epsilon`` (None: not given).
        threshold: the test's threshold on the projected release.
        tpr: its true-positive rate on the held-out trials with the canary.
        fpr: its false-positive rate on the held-out trials without.
        held_out: held-out trials in each world.
        epsilon_lower: the lower bound on ε at ``confidence``.
    """

    name: str
    noise_multiplier: float | None
    delta: float
    accounted_epsilon: float
    budget_epsilon: float | None
    threshold: float
    tpr: float
    fpr: float
    held_out: int
    epsilon_lower: float


@dataclass(frozen=True)
class AuditReport:
    """Both arms of an audit, and what was audited."""

    method: str
    site: str
    images: int
    trials: int
    confidence: float
    arms: tuple[AuditArm, ...]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def markdown(self) -> str:
        lines = [
            f"# Privacy audit: {self.method}, canary in {self.site} ({self.images} images)",
            "",
            f"{self.trials} releases with the canary and {self.trials} without per arm; the "
            f"test fitted on half, its rates and the ε lower bound ({self.confidence:.0%} "
            "Clopper–Pearson) on the other half.",
            "",
            "| prototype DP | z | δ | accounted ε (one round) | TPR | FPR | empirical ε ≥ |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm in self.arms:
            noise = "–" if arm.noise_multiplier is None else f"{arm.noise_multiplier:.3g}"
            dp = arm.name if arm.budget_epsilon is None else f"on (run ε = {arm.budget_epsilon:g})"
            lines.append(
                f"| {dp} | {noise} | {arm.delta:.3g} | {arm.accounted_epsilon:.3g} | "
                f"{arm.tpr:.2f} | {arm.fpr:.2f} | {arm.epsilon_lower:.3g} |"
            )
        return "\n".join(lines) + "\n"


def epsilon_lower_bound(
    true_positives: int,
    positives: int,
    false_positives: int,
    negatives: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """The ε that a membership test with these counts proves at ``confidence`` (0: none).

    Clopper–Pearson intervals (:meth:`scipy.stats.binomtest`) bound the true-positive rate
    from below and the false-positive rate from above; any (ε, δ)-DP mechanism has
    TPR ≤ e^ε·FPR + δ and 1 − FPR ≤ e^ε·(1 − TPR) + δ.
    """
    from scipy.stats import binomtest

    def interval(hits: int, trials: int):
        return binomtest(hits, trials).proportion_ci(confidence_level=confidence, method="exact")

    tpr_low = interval(true_positives, positives).low
    fpr_high = interval(false_positives, negatives).high
    bounds = [0.0]
    if tpr_low - delta > 0:
        bounds.append(math.log((tpr_low - delta) / fpr_high))
    if 1 - fpr_high - delta > 0 and tpr_low < 1:
        bounds.append(math.log((1 - fpr_high - delta) / (1 - tpr_low)))
    return max(bounds)


def canary_of(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of one image unlike the site's others: its first, intensities inverted,
    with its mask."""
    image, mask = dataset[0]
    return (1 - image)[None], mask[None]


def _class_means(algorithm: Algorithm, payload: dict[str, torch.Tensor]) -> torch.Tensor:
    """A release as one vector: per prototype set, the mean row of each class (0: none)."""
    parts = []
    for prototypes in prototype_sets(algorithm.uploads):
        rows = payload[prototypes.rows].to(torch.float64)
        labels = payload[prototypes.labels]
        sums = rows.new_zeros(algorithm.num_classes, rows.shape[1]).index_add_(0, labels, rows)
        counts = torch.bincount(labels, minlength=algorithm.num_classes).clamp(min=1)
        parts.append((sums / counts[:, None]).flatten())
    return torch.cat(parts)


@dataclass(frozen=True)
class _Kept(PrototypePrivacy):
    """A mechanism that adds nothing and keeps, per stream, what it was given."""

    given: dict = field(default_factory=dict)

    def release(self, sums, counts, stream, state):
        self.given[stream] = (sums, counts)
        return sums, counts


def _client_release(
    algorithm: Algorithm,
    initial: dict[str, torch.Tensor],
    batches: list,
    config: RunConfig,
    privacy: PrototypePrivacy | None,
) -> dict[str, torch.Tensor]:
    """The payload of one round of the client code on ``batches``, from the frozen
    ``initial`` model."""
    model = algorithm.build_model()
    model.load_state_dict(initial)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    device = torch.device(config.device)
    model.to(device)
    return local_train(
        algorithm, model, frozen, batches, {}, {}, 1, device, privacy=privacy
    ).payload


def _releases(
    algorithm: Algorithm,
    initial: dict[str, torch.Tensor],
    batches: list,
    config: RunConfig,
    privacy: PrototypePrivacy | None,
    trials: int,
    first_round: int,
) -> torch.Tensor:
    """``[trials, V]``: the site's releases of ``batches`` through ``privacy``, as
    :func:`_class_means` vectors, each trial drawing the mechanism's noise as round
    ``first_round + trial``."""
    if privacy is None:  # no noise: every release is the same
        return _class_means(
            algorithm, _client_release(algorithm, initial, batches, config, None)
        ).expand(trials, -1)
    kept = _Kept(**dataclasses.asdict(privacy))
    _client_release(algorithm, initial, batches, config, kept)
    vectors = []
    for trial in range(trials):
        mechanism = dataclasses.replace(privacy, round=first_round + trial)
        payload = {}
        for stream, (sums, counts) in kept.given.items():
            payload |= released_prototypes(sums, counts, stream, mechanism, {})
        vectors.append(_class_means(algorithm, payload))
    return torch.stack(vectors)


def _fitted_threshold(inside: torch.Tensor, outside: torch.Tensor, delta, confidence) -> float:
    """The threshold among the scores that proves the most on the trials it is fitted on."""
    candidates = torch.cat([inside, outside]).tolist()

    def proved(threshold: float) -> float:
        positives = int((inside >= threshold).sum())
        false = int((outside >= threshold).sum())
        return epsilon_lower_bound(positives, len(inside), false, len(outside), delta, confidence)

    return max(candidates, key=proved)


def audit_arm(
    name: str,
    config: RunConfig,
    site: SiteData,
    trials: int,
    confidence: float,
) -> AuditArm:
    """``trials`` releases of ``site`` with the canary and ``trials`` without, under
    ``config``'s prototype DP (none: off), and what they prove."""
    algorithm = build_algorithm(config)
    torch.manual_seed(config.seed)  # the simulator's round-1 global model
    initial = model_weights(algorithm.build_model())
    out_batches = list(DataLoader(site.train, batch_size=config.batch_size))
    in_batches = [*out_batches, canary_of(site.train)]
    images = len(site.train)
    releases = len(prototype_sets(algorithm.uploads))
    privacy = prototype_privacy(config, releases, 0, images, 1)
    if privacy is not None:
        delta = privacy.delta
    else:
        delta = config.dp_delta if config.dp_delta is not None else default_delta(images)
    inside = _releases(algorithm, initial, in_batches, config, privacy, trials, 1)
    outside = _releases(algorithm, initial, out_batches, config, privacy, trials, 1 + trials)
    fit = trials // 2
    direction = inside[:fit].mean(0) - outside[:fit].mean(0)
    scores_in, scores_out = inside @ direction, outside @ direction
    threshold = _fitted_threshold(scores_in[:fit], scores_out[:fit], delta, confidence)
    held_in, held_out = scores_in[fit:], scores_out[fit:]
    true_positives = int((held_in >= threshold).sum())
    false_positives = int((held_out >= threshold).sum())
    return AuditArm(
        name=name,
        noise_multiplier=None if privacy is None else privacy.noise_multiplier,
        delta=delta,
        accounted_epsilon=(
            math.inf
            if privacy is None
            else epsilon_spent(privacy.noise_multiplier, releases, delta)
        ),
        budget_epsilon=config.proto_dp_epsilon,
        threshold=threshold,
        tpr=true_positives / len(held_in),
        fpr=false_positives / len(held_out),
        held_out=len(held_in),
        epsilon_lower=epsilon_lower_bound(
            true_positives, len(held_in), false_positives, len(held_out), delta, confidence
        ),
    )


def audit_privacy(
    config: RunConfig, site: SiteData, trials: int = 500, confidence: float = 0.95
) -> AuditReport:
    """The audit of ``site``'s prototypes: without DP, and with ``config``'s prototype DP.

    Args:
        config: the run; its prototype DP settings (or :data:`AUDIT_EPSILON`) are the arm
            with DP.
        site: the site the canary goes into.
        trials: releases with the canary, and as many without, per arm (at least 4;
            default 500).
        confidence: of the Clopper–Pearson intervals (default 0.95).
    """
    if trials < 4:
        raise ValueError(f"trials must be at least 4 (half fit the test); got {trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if not prototype_sets(build_algorithm(config).uploads):
        raise ValueError(f"{config.method} sends no prototypes: nothing to audit")
    off = dataclasses.replace(config, proto_dp_epsilon=None, proto_dp_noise=None)
    on = config
    if config.proto_dp_epsilon is None and config.proto_dp_noise is None:
        on = dataclasses.replace(config, proto_dp_epsilon=AUDIT_EPSILON)
    arms = tuple(
        audit_arm(name, arm, site, trials, confidence) for name, arm in (("off", off), ("on", on))
    )
    return AuditReport(config.method, site.name, len(site.train), trials, confidence, arms)
