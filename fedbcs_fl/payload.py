"""The payload contract: what a client sends beside its weights, declared by its method.

A payload is a dict of tensors. Each method lists what its clients send in
``Algorithm.uploads``, one entry per kind below, and every reader of a reply reads that
declaration, never the keys' spelling: screening checks each reply against it
(:func:`payload_problem`), the prototype fault drills corrupt the rows it names, and paper
Table 3 counts those rows (``Algorithm.count_prototypes``).

Kinds, with K the number of classes and D the method's ``prototype_dim`` of the set:

- :class:`PrototypeSet`: prototype ``rows``, float32 ``[n, D]``, and their class ids
  ``labels``, int64 ``[n]``, each in [0, K);
- :class:`StepCounts`: the local optimiser steps (done, scheduled), int64 ``[2]``,
  0 < done ≤ scheduled;
- :class:`ClientId`: the id a client drew for itself, int64 ``[1]``.

Every declared key is required and every other key is refused: a reply holds exactly what
its method sends, in the declared dtypes and shapes, or it is rejected with the reason.
Checking a reply never raises, whatever the reply holds.

Example (FedContrast's declaration)::

    uploads = (PrototypeSet("protos", "labels"), StepCounts("steps"), ClientId("owner"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .algorithms.base import Algorithm


def _tensor_problem(payload: dict, key: str, dtype: torch.dtype, ndim: int) -> str | None:
    """Why ``payload[key]`` is not a ``dtype`` tensor of ``ndim`` dimensions, if it is not."""
    value = payload[key]
    if not isinstance(value, torch.Tensor):
        return f"payload {key} is a {type(value).__name__}, not a tensor"
    if value.layout != torch.strided:
        return f"payload {key} is a {value.layout} tensor, not a dense one"
    if value.dtype != dtype:
        return f"payload {key} has dtype {value.dtype}, expected {dtype}"
    if value.ndim != ndim:
        return f"payload {key} has shape {tuple(value.shape)}, expected a {ndim}-D tensor"
    return None


@dataclass(frozen=True)
class PrototypeSet:
    """Prototype rows and the class id of each row.

    Args:
        rows: the key of the rows, float32 ``[n, D]``; D is ``algorithm.prototype_dim(set)``.
        labels: the key of their class ids, int64 ``[n]``, each in [0, K).
    """

    rows: str
    labels: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.rows, self.labels)

    def problem(self, payload: dict, algorithm: Algorithm) -> str | None:
        reason = _tensor_problem(payload, self.rows, torch.float32, 2)
        reason = reason or _tensor_problem(payload, self.labels, torch.int64, 1)
        if reason:
            return reason
        rows, labels = payload[self.rows], payload[self.labels]
        dim = algorithm.prototype_dim(self)
        if rows.shape[1] != dim:
            return f"payload {self.rows} has shape {tuple(rows.shape)}, expected [n, {dim}]"
        if labels.shape[0] != rows.shape[0]:
            return (
                f"payload {self.labels} has {labels.shape[0]} class ids for the "
                f"{rows.shape[0]} rows of {self.rows}"
            )
        classes = algorithm.num_classes
        if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
            return f"payload {self.labels} holds class ids outside [0, {classes})"
        return None


@dataclass(frozen=True)
class _Int64Vector:
    """One int64 ``[n]`` tensor under ``key``; a subclass checks its shape and values."""

    key: str

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)

    def problem(self, payload: dict, algorithm: Algorithm) -> str | None:
        reason = _tensor_problem(payload, self.key, torch.int64, 1)
        return reason or self._value_problem(payload[self.key])

    def _value_problem(self, value: torch.Tensor) -> str | None:
        raise NotImplementedError


@dataclass(frozen=True)
class StepCounts(_Int64Vector):
    """The local optimiser steps of the round, (done, scheduled), int64 ``[2]`` with
    0 < done ≤ scheduled (FedContrast weighs an update by their ratio).

    Args:
        key: the payload key.
    """

    def _value_problem(self, value: torch.Tensor) -> str | None:
        if value.shape != (2,) or not 0 < value[0] <= value[1]:
            return (
                f"payload {self.key} {value.tolist()} are not (done, scheduled) "
                "with 0 < done ≤ scheduled"
            )
        return None


@dataclass(frozen=True)
class ClientId(_Int64Vector):
    """The id a client drew for itself, int64 ``[1]`` (any value: it only tells apart the
    rows of different clients).

    Args:
        key: the payload key.
    """

    def _value_problem(self, value: torch.Tensor) -> str | None:
        if value.shape != (1,):
            return f"payload {self.key} has shape {tuple(value.shape)}, expected (1,)"
        return None


Upload = PrototypeSet | StepCounts | ClientId


def prototype_sets(uploads: tuple[Upload, ...]) -> list[PrototypeSet]:
    """The prototype sets among ``uploads``, in their declared order."""
    return [entry for entry in uploads if isinstance(entry, PrototypeSet)]


def payload_problem(payload: Any, algorithm: Algorithm) -> str | None:
    """Why a client's ``payload`` breaks ``algorithm.uploads``, or None if it keeps it.

    Checked in order: a dict, no undeclared key, every declared key present, each entry's
    dtype, shape and values (screening then checks the values' magnitudes, as the
    weights'). Never raises.
    """
    if not isinstance(payload, dict):
        return f"payload is a {type(payload).__name__}, not a dict of tensors"
    declared = [key for entry in algorithm.uploads for key in entry.keys]
    undeclared = next(
        (key for key in payload if not isinstance(key, str) or key not in declared), None
    )
    if undeclared is not None:
        return f"undeclared payload key {undeclared!r}"
    missing = next((key for key in declared if key not in payload), None)
    if missing is not None:
        return f"missing payload key {missing!r}"
    for entry in algorithm.uploads:
        reason = entry.problem(payload, algorithm)
        if reason:
            return reason
    return None
