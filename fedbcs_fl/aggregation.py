"""Server-side aggregation math: pure functions on tensors, trivial to unit-test.

The model weights are aggregated by one of :data:`~fedbcs_fl.config.AGGREGATIONS`
(``--aggregation``): ``mean`` is the method's own (count-weighted for FedAvg); the robust
rules ignore example counts and take, per coordinate, the median or the mean without the
extreme values, or one client's weights (Krum), so that one bad site cannot move the model
far (:func:`robust_aggregate`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .config import AGGREGATIONS


def weighted_average(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """``Σ_k w_k·state_k / Σ_k w_k`` per key, accumulated in float64, returned in each dtype.

    Integer tensors (e.g. counters) are taken from the first state unchanged.
    """
    if not states:
        raise ValueError("weighted_average needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {list(weights)}")
    out = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            acc += state[key].to(torch.float64) * (weight / total)
        out[key] = acc.to(first.dtype)
    return out


# Krum's assumed number of bad clients: the threat is one bad site (docs/reliability.md).
KRUM_BAD_CLIENTS = 1


def _trimmed_mean(stacked: torch.Tensor) -> torch.Tensor:
    """Per coordinate of ``[n, ...]``, the mean without the largest and the smallest value
    (one client's worth at each end; all n values when n < 3).

    Flower's ``aggregate_trimmed_avg`` cuts a fraction of n, ``int(fraction · n)`` values,
    which cannot say "one" for every n (``int(1/49 · 49)`` is 0): hence this one.
    """
    trim = 1 if stacked.shape[0] >= 3 else 0
    ordered = stacked.sort(dim=0).values
    return ordered[trim : stacked.shape[0] - trim].mean(0)


def robust_aggregate(
    states: Sequence[dict[str, torch.Tensor]], rule: str
) -> dict[str, torch.Tensor]:
    """The weights of ``states`` aggregated by ``rule``, one of ``median``,
    ``trimmed-mean`` and ``krum``, computed in float64 and returned in each dtype.

    ``median`` (FedMedian) and ``krum`` are Flower's (``flwr.server.strategy.aggregate``):
    Krum keeps the one state whose summed squared distance to its n − f − 2 nearest
    others is smallest, with f = :data:`KRUM_BAD_CLIENTS` (at least 1 neighbour).
    ``trimmed-mean`` is :func:`_trimmed_mean`. Integer tensors are taken from the first
    state, as :func:`weighted_average` does.
    """
    if not states:
        raise ValueError("robust_aggregate needs at least one state")
    keys = [key for key, value in states[0].items() if value.is_floating_point()]
    stacked = {key: torch.stack([s[key].to(torch.float64) for s in states]) for key in keys}
    if rule == "trimmed-mean":
        merged = {key: _trimmed_mean(values) for key, values in stacked.items()}
    elif rule in ("median", "krum"):
        with warnings.catch_warnings():  # Flower's command-line modules warn at import
            warnings.simplefilter("ignore", DeprecationWarning)
            from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median

        results = [([stacked[key][i].numpy() for key in keys], 1) for i in range(len(states))]
        if rule == "median":
            arrays = aggregate_median(results)
        else:
            arrays = aggregate_krum(results, num_malicious=KRUM_BAD_CLIENTS, to_keep=0)
        merged = {key: torch.from_numpy(np.asarray(a)) for key, a in zip(keys, arrays, strict=True)}
    else:
        raise ValueError(f"unknown aggregation {rule!r}; valid: {', '.join(AGGREGATIONS)}")
    first = states[0]
    return {
        key: merged[key].to(value.dtype) if key in merged else value.clone()
        for key, value in first.items()
    }


def finch_cluster_means(vectors: torch.Tensor) -> torch.Tensor:
    """FINCH (cosine distance) over ``[N, D]`` vectors; means of the last partition's clusters.

    The last partition is FINCH's coarsest. One vector is its own cluster; two always
    merge into one (each is the other's first neighbour). Returns ``[S, D]``, clusters in
    order of their first member, so the result is deterministic.
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        shape = tuple(vectors.shape)
        raise ValueError(f"finch_cluster_means needs [N, D] vectors with N ≥ 1, got {shape}")
    if vectors.shape[0] == 1:
        return vectors.clone()
    with warnings.catch_warnings():
        # finch-clust warns at import that its optional approximate-NN backend is missing;
        # exact nearest neighbours are what we want for a handful of prototypes. It loads
        # scikit-learn and SciPy: only a run that clusters pays for them.
        warnings.simplefilter("ignore", UserWarning)
        from finch import FINCH

    data = vectors.detach().to(torch.float32).cpu().numpy()
    partitions, _, _ = FINCH(data, distance="cosine", verbose=False)
    labels = partitions[:, -1]
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    means = [vectors[torch.from_numpy(labels == c)].mean(0) for c in order]
    return torch.stack(means)


def cluster_class_prototypes(
    protos: Sequence[torch.Tensor], present: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """FINCH cluster prototypes per class over the clients' prototypes, and their mean.

    Args:
        protos: per client ``[K, D]`` prototypes.
        present: per client ``[K]`` bool, which classes the client has.

    Returns:
        As :func:`cluster_class_rows` over the present rows, in client order.
    """
    rows = torch.cat([p[m] for p, m in zip(protos, present, strict=True)])
    labels = torch.cat([torch.nonzero(m)[:, 0] for m in present])
    return cluster_class_rows(rows, labels, num_classes=protos[0].shape[0])


def cluster_class_rows(
    rows: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> dict[str, torch.Tensor]:
    """FINCH cluster prototypes per class over labelled vectors, and their mean.

    Args:
        rows: ``[N, D]`` vectors (e.g. every client's prototypes, concatenated).
        labels: ``[N]`` int64 class id of each row.
        num_classes: K.

    Returns:
        ``{"protos": [S, D], "labels": [S] class ids, "mean": [K, D], "mean_present": [K]}``
        where ``mean[c]`` is the mean of class c's cluster prototypes (paper eq. 13–14)
        and ``mean_present[c]`` says whether any row has class c.
    """
    dim = rows.shape[1]
    clusters = [torch.zeros(0, dim, dtype=rows.dtype)]
    cluster_labels = [torch.zeros(0, dtype=torch.int64)]
    mean = torch.zeros(num_classes, dim, dtype=rows.dtype)
    mean_present = torch.zeros(num_classes, dtype=torch.bool)
    for c in range(num_classes):
        members = rows[labels == c]
        if members.shape[0] == 0:
            continue
        means = finch_cluster_means(members)
        clusters.append(means)
        cluster_labels.append(torch.full((means.shape[0],), c, dtype=torch.int64))
        mean[c] = means.mean(0)
        mean_present[c] = True
    return {
        "protos": torch.cat(clusters),
        "labels": torch.cat(cluster_labels),
        "mean": mean,
        "mean_present": mean_present,
    }
