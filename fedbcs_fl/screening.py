"""Server-side validation of client updates, before any aggregation, and of its result.

A federation spans institutions: a buggy or hostile site can send garbage. Every reply
is checked against the global model; a reply that fails is rejected with its reason,
and the round aggregates the others. Both engines (simulator, Flower) call
:func:`screen_updates` through the one server-side round (:mod:`fedbcs_fl.round`).

Rejected when a reply has
- weights that are not a dict of dense tensors, a missing or extra parameter key, or a
  wrong shape or dtype;
- NaN or Inf anywhere (weights, payload, metrics), or an absurd magnitude: a value above
  ``max_abs`` (10⁹) in size;
- a payload that breaks its method's declaration (``Algorithm.uploads``,
  :func:`~fedbcs_fl.payload.payload_problem`): an undeclared or a missing key, a value
  that is not a tensor of the declared dtype and shape, prototypes of another width than
  the method's or whose class ids do not match the rows or lie outside [0, K), step counts
  (FedContrast's local progress, whose ratio weighs the update) that are not
  0 < done ≤ scheduled;
- metrics that are not a dict of finite numbers under string names;
- an example count that is not an integer in [1, ``max_examples``];
- an update norm ‖w_k − w_global‖ (its distance to the global model it was sent) above
  ``norm_factor`` × the median of the other clients' (with at least ``norm_min_clients``
  replies; 2 by default, so a pair is checked too: the larger of two updates far apart is
  rejected);
- prototypes far larger than the others': per declared prototype set, its largest row norm
  above ``norm_factor`` × the median of the other clients' (the same rule).

No site can inflate its weight in the aggregate: :func:`cap_example_counts` counts a site's
examples at most ``count_factor`` × the median of the other accepted sites' counts (the
server cannot check a count; it can check that one site does not claim to be many).

The next global model, once aggregated, is checked too (:func:`global_problem`): one that is
not finite or holds absurd values is never kept.

Screening never raises, whatever a reply holds: a malformed reply is a rejected one.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .algorithms.base import Algorithm, ClientUpdate
from .payload import payload_problem, prototype_sets
from .weight_privacy import weight_dp_on


@dataclass(frozen=True)
class ScreeningPolicy:
    """Thresholds of :func:`screen_updates` and :func:`cap_example_counts`.

    Args:
        max_examples: example counts above this are absurd (default 10,000,000).
        norm_factor: reject an update whose distance to the global weights, or whose
            prototypes' largest row norm, exceeds this many times the median of the
            others' (default 10; 0 disables both checks).
        norm_min_clients: those checks need at least this many replies (default 2).
        count_factor: a site's examples count at most this many times the median of the
            other sites' counts (default 4; 0 disables the cap).
        max_abs: any value (weight, payload, metric) above this in size is absurd
            (default 1e9: honest weights and prototypes are far smaller, and HarmoFL's
            amplitude buffer, the largest honest value, is about the pixels of one image).
    """

    max_examples: int = 10_000_000
    norm_factor: float = 10.0
    norm_min_clients: int = 2
    count_factor: float = 4.0
    max_abs: float = 1e9

    @classmethod
    def of(cls, config) -> ScreeningPolicy:
        """The policy of a run's :class:`~fedbcs_fl.config.RunConfig` (both engines).

        With weight DP on the norm checks are off: whether one site's update passes
        would depend on the others' (their median), which no clip bounds, and the clip
        already bounds every update (docs/privacy.md).
        """
        return cls(
            max_examples=config.screen_max_examples,
            norm_factor=0.0 if weight_dp_on(config) else config.screen_norm_factor,
            count_factor=config.screen_count_factor,
        )


def _magnitude_problem(tensors: dict, what: str, max_abs: float) -> str | None:
    """Why the floating tensors of ``tensors`` are not finite and at most ``max_abs``."""
    for key, value in tensors.items():
        if not value.is_floating_point() or not value.numel():
            continue
        # One pass over the tensor, every round: the maximum is NaN or ∞ where a value is.
        largest = float(value.abs().max())
        if not math.isfinite(largest):
            return f"non-finite values in {what}{key}"
        if largest > max_abs:
            return f"absurd magnitude in {what}{key} (|value| {largest:.3g} > {max_abs:.3g})"
    return None


def _structure_problem(weights, reference) -> str | None:
    if not isinstance(weights, dict):
        return f"weights are a {type(weights).__name__}, not a dict of tensors"
    missing = sorted(set(reference) - set(weights), key=str)
    extra = sorted(set(weights) - set(reference), key=str)
    if missing:
        return f"missing parameter {missing[0]}" + (
            f" (+{len(missing) - 1})" if missing[1:] else ""
        )
    if extra:
        return f"unexpected parameter {extra[0]}" + (f" (+{len(extra) - 1})" if extra[1:] else "")
    for key, ref in reference.items():
        value = weights[key]
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            return f"{key} is not a dense tensor"
        if value.shape != ref.shape:
            return f"{key} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
        if value.dtype != ref.dtype:
            return f"{key} has dtype {value.dtype}, expected {ref.dtype}"
    return None


def _metrics_problem(metrics, max_abs: float) -> str | None:
    if not isinstance(metrics, dict):
        return f"metrics are a {type(metrics).__name__}, not a dict of numbers"
    for name, value in metrics.items():
        if not isinstance(name, str):
            return f"metric name {name!r} is not a string"
        if not isinstance(value, int | float):
            return f"metric {name!r} is a {type(value).__name__}, not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "non-finite metrics"
        if abs(value) > max_abs:  # also an int too large for a float
            return f"absurd magnitude in metric {name!r}"
    return None


def _count_problem(count, max_examples: int) -> str | None:
    if type(count) is not int or count <= 0:  # bool is no count
        return f"example count {count!r} is not a positive integer"
    if count > max_examples:
        return f"example count {count} exceeds the maximum {max_examples}"
    return None


def _reply_problem(
    algorithm: Algorithm, update: ClientUpdate, global_weights, policy: ScreeningPolicy
) -> str | None:
    """Why one reply, alone, cannot be aggregated, or None."""
    return (
        _structure_problem(update.weights, global_weights)
        or _magnitude_problem(update.weights, "", policy.max_abs)
        or payload_problem(update.payload, algorithm)
        or _magnitude_problem(update.payload, "payload ", policy.max_abs)
        or _metrics_problem(update.metrics, policy.max_abs)
        or _count_problem(update.num_examples, policy.max_examples)
    )


def _update_norm(weights, global_weights) -> float:
    total = 0.0
    for key, ref in global_weights.items():
        if ref.is_floating_point():
            total += float((weights[key].double() - ref.double()).square().sum())
    return math.sqrt(total)


def _outliers(sizes: dict[str, float], factor: float, what: str) -> dict[str, str]:
    """``{client: reason}`` of each size above ``factor`` × the median of the others'."""
    outliers = {}
    for client, size in sizes.items():
        median = statistics.median(v for c, v in sizes.items() if c != client)
        if size > factor * median:
            outliers[client] = (
                f"{what} {size:.3g} is over {factor:g}× the median of the others ({median:.3g})"
            )
    return outliers


def screen_updates(
    algorithm: Algorithm,
    updates: list[tuple[str, ClientUpdate]],
    global_weights: dict[str, torch.Tensor],
    policy: ScreeningPolicy = ScreeningPolicy(),
) -> tuple[list[tuple[str, ClientUpdate]], dict[str, str]]:
    """Split ``(client, update)`` pairs into the accepted ones and ``{client: reason}``."""
    rejected: dict[str, str] = {}
    survivors = []
    for client, update in updates:
        reason = _reply_problem(algorithm, update, global_weights, policy)
        if reason is None:
            survivors.append((client, update))
        else:
            rejected[client] = reason
    if policy.norm_factor > 0 and len(survivors) >= policy.norm_min_clients:
        norms = {c: _update_norm(u.weights, global_weights) for c, u in survivors}
        rejected |= _outliers(norms, policy.norm_factor, "update norm")
        for prototypes in prototype_sets(algorithm.uploads):
            largest = {
                c: float(u.payload[prototypes.rows].norm(dim=1).max())
                for c, u in survivors
                if c not in rejected and u.payload[prototypes.rows].numel()
            }
            if len(largest) >= policy.norm_min_clients:
                what = f"largest prototype norm in {prototypes.rows}"
                for client, reason in _outliers(largest, policy.norm_factor, what).items():
                    rejected.setdefault(client, reason)
        survivors = [(c, u) for c, u in survivors if c not in rejected]
    return survivors, rejected


def cap_example_counts(
    accepted: list[tuple[str, ClientUpdate]], policy: ScreeningPolicy = ScreeningPolicy()
) -> tuple[list[tuple[str, ClientUpdate]], dict[str, str]]:
    """The accepted replies with each count at most ``count_factor`` × the median of the
    others' counts, and ``{client: "claimed N examples, counted M"}`` for those capped.

    Example counts are self-reported: without a bound, one site claiming 10⁷ examples is
    the whole of a count-weighted mean. The cap keeps an honest federation's counts (the
    largest site of this project's data sets has at most 3× the median of the others) and
    lets no site count for more than ``count_factor`` typical sites.
    """
    if policy.count_factor <= 0 or len(accepted) < 2:
        return accepted, {}
    counts = {client: update.num_examples for client, update in accepted}
    capped, notes = [], {}
    for client, update in accepted:
        others = statistics.median(n for c, n in counts.items() if c != client)
        bound = max(1, math.floor(policy.count_factor * others))
        if update.num_examples > bound:
            notes[client] = f"claimed {update.num_examples} examples, counted {bound}"
            update = dataclasses.replace(update, num_examples=bound)
        capped.append((client, update))
    return capped, notes


def global_problem(
    tensors: Iterable[tuple[str, dict[str, torch.Tensor]]], policy: ScreeningPolicy
) -> str | None:
    """Why an aggregated global model, given as ``(what, tensors)`` parts (the weights,
    the payload), must not be kept: a non-finite or absurd value."""
    for what, part in tensors:
        reason = _magnitude_problem(part, what, policy.max_abs)
        if reason:
            return f"the aggregated global model is unusable: {reason}"
    return None
