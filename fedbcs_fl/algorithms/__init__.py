"""The federated algorithms, by name.

Each is a small module that says what differs from FedAvg (:class:`Algorithm`). Modules
are imported when a method is first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .base import Algorithm, ClientUpdate, LocalContext

if TYPE_CHECKING:  # the config names the methods, so it imports this package
    from ..config import RunConfig

# method name → (module in this package, class name), in the order of paper Table 1.
METHODS: dict[str, tuple[str, str]] = {
    "fedavg": ("base", "Algorithm"),
    "fedprox": ("fedprox", "FedProx"),
    "moon": ("moon", "MOON"),
    "fedproto": ("fedproto", "FedProto"),
    "harmofl": ("harmofl", "HarmoFL"),
    "fpl": ("fpl", "FPL"),
    "fedcontrast": ("fedcontrast", "FedContrast"),
    "fedplvm": ("fedplvm", "FedPLVM"),
    "feduv": ("feduv", "FedUV"),
    "fedbcs": ("fedbcs", "FedBCS"),
}


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


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
