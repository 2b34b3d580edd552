"""The checkpoint a killed run resumes from.

A checkpoint is written atomically (:func:`fedbcs_fl.run_folder.atomic_write_bytes`), so a
crash at any point leaves the old one or the new one, and loaded with
``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .run_folder import atomic_write_bytes

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
# What ``torch.load(weights_only=True)`` reads besides tensors (exact types: a subclass,
# e.g. a NumPy float, is refused), and the containers it reads them in.
LOADABLE_SCALARS = (bool, int, float, str, type(None))
LOADABLE_SEQUENCES = (list, tuple)
LOADABLE_MAPPINGS = (dict, OrderedDict)


def unloadable_entry(value: Any, path: str) -> str | None:
    """The first entry of ``value`` that :func:`load_checkpoint` could not read back, as its
    path from ``path`` and its type (e.g. ``"state['model'], a Linear"``); None if none.

    A checkpoint is read with ``weights_only=True``: tensors, numbers, strings, None, and
    lists, tuples and dicts (with str or int keys, as Flower's node state also needs) of
    them. One module or generator anywhere makes the whole checkpoint unreadable.
    """
    if isinstance(value, torch.Tensor) or type(value) in LOADABLE_SCALARS:
        return None
    if type(value) in LOADABLE_SEQUENCES:
        items = enumerate(value)
    elif type(value) in LOADABLE_MAPPINGS:
        for key in value:
            if type(key) not in (str, int):
                return f"{path}[{key!r}], a key of type {type(key).__name__}"
        items = value.items()
    else:
        return f"{path}, a {type(value).__name__}"
    for key, item in items:
        entry = unloadable_entry(item, f"{path}[{key!r}]")
        if entry is not None:
            return entry
    return None


def save_checkpoint(path: str | Path, state: dict, before_rename=None) -> None:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue(), before_rename)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`save_checkpoint`; clear errors for foreign files."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated, foreign or unsafe file
        raise ValueError(f"{path} is not a readable fedbcs checkpoint: {error}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path} has checkpoint format {found!r}; this fedbcs reads {CHECKPOINT_FORMAT}"
        )
    return state
