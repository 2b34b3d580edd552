"""The federated algorithms, by name.

Each is a small module that says what differs from FedAvg (:class:`Algorithm`); the
methods, their classes and options are declared in :data:`METHODS` (:mod:`.methods`).
Modules are imported when a method is first asked for, and :class:`Algorithm`,
:class:`ClientUpdate` and :class:`LocalContext` on first use: they import torch, and the
command line's parser, which reads :data:`METHODS`, must not (issue 18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .methods import METHODS

if TYPE_CHECKING:
    from ..config import RunConfig
    from .base import Algorithm, ClientUpdate, LocalContext

# The names imported on first use, each with its module.
_LAZY = {"Algorithm": ".base", "ClientUpdate": ".base", "LocalContext": ".base"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    method = METHODS[name]
    return getattr(importlib.import_module(f"{__name__}.{method.module}"), method.cls)


def all_algorithms() -> dict[str, type[Algorithm]]:
    return {name: algorithm_class(name) for name in METHODS}


def build_algorithm(config: RunConfig) -> Algorithm:
    """``config.method`` for a model with the run's input channels and classes, as its
    :class:`~fedbcs_fl.data.DataSource` gives them (:meth:`RunConfig.resolved`)."""
    config = config.resolved()
    return algorithm_class(config.method)(config, config.in_channels, config.num_classes)


__all__ = [
    "METHODS",
    "Algorithm",
    "ClientUpdate",
    "LocalContext",
    "algorithm_class",
    "all_algorithms",
    "build_algorithm",
]
