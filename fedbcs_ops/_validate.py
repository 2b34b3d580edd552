"""Argument checks shared by the public ops: each error names the argument at fault."""

from __future__ import annotations

import torch


def check_tensor(
    name: str, value: object, *, ndim: int | None = None, kind: str | None = None
) -> torch.Tensor:
    """Check that ``value`` is a tensor with ``ndim`` dims of ``kind`` "float" or "int".

    Args:
        name: the argument's name, put in the error message.
        value: what was passed.
        ndim: the number of dimensions it must have (default: any).
        kind: ``"float"`` (floating point) or ``"int"`` (integer, not bool); default any.

    Returns:
        ``value``. Raises ``TypeError`` (not a tensor, wrong kind) or ``ValueError``
        (wrong number of dimensions), each naming ``name``.

    Example:
        >>> check_tensor("x", torch.zeros(2, 3), ndim=3)
        Traceback (most recent call last):
        ...
        ValueError: x must have 3 dimensions, got shape (2, 3) (2)
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)} ({value.ndim})"
        )
    if kind == "float" and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if kind == "int" and (
        value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
    ):
        raise TypeError(f"{name} must be an integer tensor, got {value.dtype}")
    return value


def check_same_device(**tensors: torch.Tensor | None) -> None:
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"tensors must be on one device: {where}")
