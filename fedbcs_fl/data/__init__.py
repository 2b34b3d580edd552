"""Data sources by name (:mod:`~fedbcs_fl.data.sources`): the embedded synthetic sets and
the public real sets, each with its sites, classes, channels and run defaults."""

from __future__ import annotations

from .base import SiteData
from .nuclei import NUCLEI_INTENSITIES
from .sources import (
    DATA_SOURCES,
    DataSource,
    RunDefaults,
    check_data,
    data_source,
    file_sources,
    load_sites,
)
from .synthetic import SYNTHETIC_SITES, SYNTHETIC_VERSION, make_synthetic

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
