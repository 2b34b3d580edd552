"""Differential privacy for the prototypes a site uploads (issue 19, docs/privacy.md).

Unit of privacy: one training image (one slice of a volume). Two data sets are
neighbours when one holds an image more. A release is one prototype set of one round
(FedBCS sends two, its encoder and decoder streams; the pixel baselines one):

1. per image and class present in it, the mean feature of the class's pixels, clipped
   to L2 norm ``C`` (:func:`clip_rows`);
2. per class, the sum of those clipped means and the number of images holding the class
   (:func:`clipped_class_sums`), over a pass of the trained model over the site's
   training images one at a time after local training
   (:meth:`~fedbcs_fl.algorithms.base.Algorithm.prototype_pass`), so that an image's
   means depend on no other image (BatchNorm's batch statistics would couple them);
3. Gaussian noise on both before anything leaves the site (:meth:`PrototypePrivacy.release`).

Sensitivity. Adding or removing one image changes each class row of the sums by at most
``C`` and each count by at most 1, in at most K classes, so the vector
``(sums / C, counts)`` moves by at most ``sqrt(2K)`` in L2 (:func:`l2_sensitivity`). The
noise is ``N(0, (z·sqrt(2K))²)`` on every entry of that vector: ``z·sqrt(2K)·C`` on the
sums, ``z·sqrt(2K)`` on the counts; ``z`` is the noise multiplier. A class whose noisy
count is below 1 is not sent (post-processing, free of privacy cost).

Accounting: each release is a Gaussian mechanism of multiplier ``z`` on the same images;
the releases compose over rounds and prototype sets (local epochs add none: only the
pass after training is summed). Google's ``dp-accounting`` RDP accountant gives ε at δ, with no
amplification by sampling (a site knows when it takes part). ``--proto-dp-epsilon``
solves ``z`` for the whole run's planned releases (every round, every set).

The guarantee is about the prototypes given the model the site computes them with: the
weights a site uploads are not covered (see docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the config names the methods, whose base class imports this module
    from .config import RunConfig

# The client's persistent state entry counting its prototype releases so far.
RELEASES_KEY = "proto_dp/releases"
# The client metric and round-record key of ε spent so far, and the client metric of its δ.
EPSILON_KEY = "proto_dp_epsilon"
DELTA_KEY = "proto_dp_delta"


def check_privacy_config(config: RunConfig) -> None:
    """Raise ``ValueError`` when ``config``'s prototype-DP settings, each valid (each
    setting's own range is checked where it is declared), ask for both a budget and a
    noise multiplier."""
    eps, sigma = config.proto_dp_epsilon, config.proto_dp_noise
    if eps is not None and sigma is not None:
        raise ValueError(
            "give proto_dp_epsilon (the budget, noise solved for it) or proto_dp_noise "
            f"(the noise multiplier), not both; got {eps} and {sigma}"
        )


def proto_dp_on(config: RunConfig) -> bool:
    """Whether ``config`` puts the uploaded prototypes through the mechanism."""
    return config.proto_dp_epsilon is not None or config.proto_dp_noise is not None


def default_delta(n_images: int) -> float:
    """δ = 1 / (10·n) for a site of ``n_images`` training images: below 1/n, the chance
    of a mechanism that simply publishes one image."""
    return 1.0 / (10 * max(n_images, 1))


def l2_sensitivity(num_classes: int) -> float:
    """How far one image moves ``(sums / C, counts)`` in L2: 1 per class row and count."""
    return math.sqrt(2 * num_classes)


def _accountant():
    from dp_accounting import rdp

    return rdp.RdpAccountant()


def _composed(noise_multiplier: float, releases: int):
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise_multiplier), releases
    )


@lru_cache(maxsize=1024)
def epsilon_spent(noise_multiplier: float, releases: int, delta: float) -> float:
    """ε at ``delta`` of ``releases`` Gaussian releases of multiplier ``noise_multiplier``
    (RDP accountant); 0 before the first."""
    if releases == 0:
        return 0.0
    accountant = _accountant()
    accountant.compose(_composed(noise_multiplier, releases))
    return float(accountant.get_epsilon(delta))


@lru_cache(maxsize=256)
def noise_for_epsilon(epsilon: float, delta: float, releases: int) -> float:
    """The smallest noise multiplier whose ``releases`` compositions stay within
    (``epsilon``, ``delta``) by the RDP accountant."""
    import dp_accounting

    return float(
        dp_accounting.calibrate_dp_mechanism(
            _accountant, lambda z: _composed(z, releases), epsilon, delta
        )
    )


def clip_rows(rows: torch.Tensor, clip: float) -> torch.Tensor:
    """``rows`` [P, D] scaled down to L2 norm at most ``clip`` (zero rows stay zero)."""
    norms = rows.norm(dim=1, keepdim=True)
    return rows * (clip / norms).clamp(max=1.0)


def clipped_class_sums(
    image_means: torch.Tensor, class_ids: torch.Tensor, num_classes: int, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the sum of the clipped per-image means and the number of images.

    Args:
        image_means: ``[P, D]``, one row per (image, class present in it).
        class_ids: ``[P]``, the class of each row.
        num_classes: K.
        clip: C.

    Returns:
        ``(sums [K, D], counts [K])`` in float64.
    """
    rows = clip_rows(image_means.to(torch.float64), clip)
    sums = rows.new_zeros(num_classes, rows.shape[1]).index_add_(0, class_ids, rows)
    counts = torch.bincount(class_ids, minlength=num_classes).to(torch.float64)
    return sums, counts


def per_image_clipped_sums(class_sums_of, labels: torch.Tensor, num_classes: int, clip: float):
    """:func:`clipped_class_sums` of a batch, from its pixel-level class sums.

    ``class_sums_of(labels, num_classes) -> (sums, counts)`` is the method's reduction
    (e.g. :func:`fedbcs_ops.class_sums` of its features); giving image b's class c the
    label b·K + c makes one call yield every (image, class) sum.
    """
    batch = labels.shape[0]
    offsets = torch.arange(batch, device=labels.device).view(batch, 1, 1) * num_classes
    sums, counts = class_sums_of(labels + offsets, batch * num_classes)
    present = counts > 0
    means = sums[present].to(torch.float64) / counts[present, None].to(torch.float64)
    class_ids = torch.nonzero(present)[:, 0] % num_classes
    return clipped_class_sums(means, class_ids, num_classes, clip)


def stream_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts``, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class PrototypePrivacy:
    """One site's prototype mechanism in one round.

    Args:
        noise_multiplier: z, the noise's standard deviation over the L2 sensitivity.
        clip: C, the bound on each image's per-class mean feature.
        delta: δ of the ε the site reports.
        seed: the run's seed; with ``site`` and ``round`` it seeds the noise.
        site: the site's index (the Flower partition id).
        round: the round, from 1.
    """

    noise_multiplier: float
    clip: float
    delta: float
    seed: int
    site: int
    round: int

    def release(
        self, sums: torch.Tensor, counts: torch.Tensor, stream: str, state: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy ``(sums [K, D], counts [K])`` of one prototype set, counted in ``state``.

        The noise comes from a generator seeded by (run seed, site, round, ``stream``), on
        the CPU, so a rerun or a resumed run draws the same, on any device.
        """
        num_classes = counts.shape[0]
        scale = self.noise_multiplier * l2_sensitivity(num_classes)
        generator = torch.Generator().manual_seed(
            stream_seed("proto-dp", self.seed, self.site, self.round, stream)
        )
        sum_noise = torch.randn(sums.shape, generator=generator, dtype=torch.float64)
        count_noise = torch.randn(counts.shape, generator=generator, dtype=torch.float64)
        noisy_sums = sums.to(torch.float64) + (scale * self.clip) * sum_noise.to(sums.device)
        noisy_counts = counts.to(torch.float64) + scale * count_noise.to(counts.device)
        kept = noisy_counts >= 1
        state[RELEASES_KEY] = int(state.get(RELEASES_KEY, 0)) + 1
        return noisy_sums * kept[:, None], noisy_counts * kept

    def epsilon(self, state: dict) -> float:
        """ε spent by this site so far at :attr:`delta`, from the releases in ``state``."""
        return epsilon_spent(self.noise_multiplier, int(state.get(RELEASES_KEY, 0)), self.delta)


def prototype_privacy(
    config: RunConfig,
    releases_per_round: int,
    site: int,
    n_images: int,
    round_index: int,
) -> PrototypePrivacy | None:
    """Site ``site``'s mechanism in round ``round_index``; None when prototype DP is off.

    With ``proto_dp_epsilon`` the noise is solved for ``rounds × releases_per_round``
    releases at the site's δ (``dp_delta``, or :func:`default_delta` of ``n_images``).
    """
    if not proto_dp_on(config):
        return None
    delta = config.dp_delta if config.dp_delta is not None else default_delta(n_images)
    noise = config.proto_dp_noise
    if noise is None:
        noise = noise_for_epsilon(
            config.proto_dp_epsilon, delta, config.rounds * releases_per_round
        )
    return PrototypePrivacy(noise, config.proto_dp_clip, delta, config.seed, site, round_index)


def privacy_statement(config: RunConfig, records: list[dict]) -> str:
    """What summary.md says of the run's prototype DP: each site's final (ε, δ) and what
    it covers; "" when it was off."""
    if not proto_dp_on(config):
        return ""
    final: dict[str, tuple[float, float]] = {}
    for record in records:
        for site, metrics in record.get("client_metrics", {}).items():
            if EPSILON_KEY in metrics:
                final[site] = (metrics[EPSILON_KEY], metrics[DELTA_KEY])
    spent = ", ".join(
        f"{site} ε = {e:.3g} at δ = {d:.3g}" for site, (e, d) in sorted(final.items())
    )
    budget = (
        f"budget ε = {config.proto_dp_epsilon:g}"
        if config.proto_dp_epsilon is not None
        else f"noise multiplier {config.proto_dp_noise:g}"
    )
    return (
        f"Prototype differential privacy ({budget}, clip C = {config.proto_dp_clip:g}; RDP "
        f"accountant over every prototype release of the run, no amplification by sampling): "
        f"{spent or 'no release recorded'}. It covers one training image's (slice's) presence "
        "in the uploaded prototypes, not the uploaded weights (docs/privacy.md)."
    )
