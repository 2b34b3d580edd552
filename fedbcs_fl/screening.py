"""Server-side validation of client updates, before any aggregation.

A federation spans institutions: a buggy or hostile site can send garbage. Every reply
is checked against the global model; a reply that fails is rejected with its reason,
and the round aggregates the others. Both engines (simulator, Flower) call
:func:`screen_updates`.

Rejected when a reply has
- NaN or Inf anywhere (weights, payload, metrics);
- a missing or extra parameter key, or a wrong shape or dtype;
- a non-positive or absurd example count;
- prototypes of the wrong dimension, or class ids outside [0, K);
- a ``steps`` payload (FedContrast's local progress) that is not (done, scheduled)
  integers with 0 < done ≤ scheduled: its ratio weighs the update in aggregation;
- an update norm ‖w_k − w_global‖ above ``norm_factor`` × the median of the other
  clients' (only with at least ``norm_min_clients`` clients; off for 2).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

import torch

from .algorithms.base import Algorithm, ClientUpdate


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
    missing = sorted(set(reference) - set(weights))
    extra = sorted(set(weights) - set(reference))
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


def _prototype_dims(algorithm: Algorithm, updates, global_payload) -> dict[str, int]:
    """The expected width of each prototype key: the global payload's, else the majority's."""
    dims = {}
    for key in algorithm.prototype_keys:
        if key in global_payload and global_payload[key].ndim == 2:
            dims[key] = global_payload[key].shape[1]
            continue
        widths = Counter(
            u.payload[key].shape[1]
            for u in updates
            if key in u.payload and u.payload[key].ndim == 2
        )
        if widths:
            dims[key] = widths.most_common(1)[0][0]
    return dims


def _payload_problem(algorithm: Algorithm, payload, dims) -> str | None:
    for key, width in dims.items():
        if key not in payload:
            continue
        value = payload[key]
        if value.ndim != 2 or value.shape[1] != width:
            return f"prototypes {key} have shape {tuple(value.shape)}, expected [n, {width}]"
    for key, value in payload.items():
        if not key.startswith("labels/") or not value.numel():
            continue
        if value.is_floating_point() or value.min() < 0 or value.max() >= algorithm.num_classes:
            return f"{key} holds class ids outside [0, {algorithm.num_classes})"
    if "steps" in payload:
        steps = payload["steps"]
        if steps.shape != (2,) or steps.is_floating_point() or not 0 < steps[0] <= steps[1]:
            return f"steps {steps.tolist()} are not (done, scheduled) with 0 < done ≤ scheduled"
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
    global_payload: dict[str, torch.Tensor],
    policy: ScreeningPolicy = ScreeningPolicy(),
) -> tuple[list[tuple[str, ClientUpdate]], dict[str, str]]:
    """Split ``(client, update)`` pairs into the accepted ones and ``{client: reason}``."""
    rejected: dict[str, str] = {}
    dims = _prototype_dims(algorithm, [u for _, u in updates], global_payload)
    survivors = []
    for client, update in updates:
        reason = _structure_problem(update.weights, global_weights)
        if reason is None and (key := _nonfinite(update.weights)) is not None:
            reason = f"non-finite values in {key}"
        if reason is None and (key := _nonfinite(update.payload)) is not None:
            reason = f"non-finite values in payload {key}"
        if reason is None and not all(math.isfinite(v) for v in update.metrics.values()):
            reason = "non-finite metrics"
        count = update.num_examples
        if reason is None and (not isinstance(count, int) or count <= 0):
            reason = f"example count {count!r} is not a positive integer"
        if reason is None and count > policy.max_examples:
            reason = f"example count {count} exceeds the maximum {policy.max_examples}"
        if reason is None:
            reason = _payload_problem(algorithm, update.payload, dims)
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
