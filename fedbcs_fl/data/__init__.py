"""Data sources by name (:mod:`~fedbcs_fl.data.sources`): the embedded synthetic sets and
the public real sets, each with its sites, classes, channels and run defaults.

:class:`SiteData` and :func:`make_synthetic` are imported on first use: they import torch,
and ``fedbcs --help``, which lists the sources, must not (issue 18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .sources import (
    DATA_SOURCES,
    NUCLEI_INTENSITIES,
    DataSource,
    RunDefaults,
    check_data,
    data_source,
    file_sources,
    load_sites,
)
from .synthetic_sites import SYNTHETIC_SITES, SYNTHETIC_VERSION

if TYPE_CHECKING:
    from .base import SiteData
    from .synthetic import make_synthetic

# The names imported on first use, each with its module.
_LAZY = {"SiteData": ".base", "make_synthetic": ".synthetic"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


__all__ = [
    "DATA_SOURCES",
    "NUCLEI_INTENSITIES",
    "SYNTHETIC_SITES",
    "SYNTHETIC_VERSION",
    "DataSource",
    "RunDefaults",
    "SiteData",
    "check_data",
    "data_source",
    "file_sources",
    "load_sites",
    "make_synthetic",
]
