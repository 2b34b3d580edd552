"""Server-side validation of client updates, before any aggregation.

A federation spans institutions: a buggy or hostile site can send garbage. Every reply
is checked against the global model; a reply that fails is rejected with its reason,
and the round aggregates the others. Both engines (simulator, Flower) call
:func:`screen_updates`.

Rejected when a reply has
- a missing or extra parameter key, or a wrong shape or dtype;
- NaN or Inf anywhere (weights, payload, metrics), or a metric that is not a number;
- a payload that breaks its method's declaration (``Algorithm.uploads``,
  :func:`~fedbcs_fl.payload.payload_problem`): an undeclared or a missing key, a value
  that is not a tensor of the declared dtype and shape, prototypes of another width than
  the method's or whose class ids do not match the rows or lie outside [0, K), step counts
  (FedContrast's local progress, whose ratio weighs the update) that are not
  0 < done ≤ scheduled;
- a non-positive or absurd example count;
- an update norm ‖w_k − w_global‖ above ``norm_factor`` × the median of the other
  clients' (only with at least ``norm_min_clients`` clients; off for 2).

Screening never raises, whatever a reply holds: a malformed reply is a rejected one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from .algorithms.base import Algorithm, ClientUpdate
from .payload import payload_problem


@dataclass(frozen=True)
class ScreeningPolicy:
    """Thresholds of :func:`screen_updates`.

    Args:
        max_examples: example counts above this are absurd (default 10,000,000).
        norm_factor: reject an update whose distance to the global weights exceeds this
            many times the median of the others (default 10; 0 disables the check).
        norm_min_clients: the norm check needs at least this many replies (default 3).
    """

    max_examples: int = 10_000_000
    norm_factor: float = 10.0
    norm_min_clients: int = 3


def _nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return key
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
        if not isinstance(value, torch.Tensor):
            return f"{key} is not a tensor"
        if value.shape != ref.shape:
            return f"{key} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
        if value.dtype != ref.dtype:
            return f"{key} has dtype {value.dtype}, expected {ref.dtype}"
    return None


def _metrics_problem(metrics) -> str | None:
    if not isinstance(metrics, dict):
        return f"metrics are a {type(metrics).__name__}, not a dict of numbers"
    for name, value in metrics.items():
        if not isinstance(value, int | float):
            return f"metric {name!r} is a {type(value).__name__}, not a number"
    if not all(math.isfinite(v) for v in metrics.values()):
        return "non-finite metrics"
    return None


def _update_norm(weights, global_weights) -> float:
    total = 0.0
    for key, ref in global_weights.items():
        if ref.is_floating_point():
            total += float((weights[key].double() - ref.double()).square().sum())
    return math.sqrt(total)


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
        reason = _structure_problem(update.weights, global_weights)
        if reason is None and (key := _nonfinite(update.weights)) is not None:
            reason = f"non-finite values in {key}"
        if reason is None:
            reason = payload_problem(update.payload, algorithm)
        if reason is None:
            reason = _metrics_problem(update.metrics)
        count = update.num_examples
        if reason is None and (type(count) is not int or count <= 0):  # bool is no count
            reason = f"example count {count!r} is not a positive integer"
        if reason is None and count > policy.max_examples:
            reason = f"example count {count} exceeds the maximum {policy.max_examples}"
        if reason is None:
            survivors.append((client, update))
        else:
            rejected[client] = reason
    if policy.norm_factor > 0 and len(survivors) >= policy.norm_min_clients:
        norms = {c: _update_norm(u.weights, global_weights) for c, u in survivors}
        for client in list(norms):
            median = statistics.median(v for c, v in norms.items() if c != client)
            if norms[client] > policy.norm_factor * median:
                rejected[client] = (
                    f"update norm {norms[client]:.3g} is over {policy.norm_factor:g}× the "
                    f"median of the others ({median:.3g})"
                )
        survivors = [(c, u) for c, u in survivors if c not in rejected]
    return survivors, rejected
