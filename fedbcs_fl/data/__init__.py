"""Data sources by name: the embedded synthetic sets and the public real sets."""

from __future__ import annotations

import importlib

from .base import SiteData
from .synthetic import SYNTHETIC_SITES, SYNTHETIC_VERSION, make_synthetic

REAL_DATASETS = ("prostate", "nuclei")
DATASETS = (*SYNTHETIC_SITES, *REAL_DATASETS)
# How real nuclei images are scaled to [0, 1] (``load_nuclei``'s ``intensity``): per image
# from its minimum to its maximum (the released code), or by the pixel type's maximum.
NUCLEI_INTENSITIES = ("minmax", "dtype")


def _real(name: str):
    """The (load, check) functions of a real data set, imported on first use."""
    module = importlib.import_module(f"{__name__}.{name}")
    return getattr(module, f"load_{name}"), getattr(module, f"check_{name}")


def load_sites(config, workers: int = 0) -> list[SiteData]:
    """The sites of ``config.dataset`` (a resolved :class:`~fedbcs_fl.config.RunConfig`).

    Real data sets raise :class:`~fedbcs_fl.data.problems.DataError` (a ValueError) listing
    every problem in the folder.
    """
    name = config.dataset
    if name in SYNTHETIC_SITES:
        version = getattr(config, "data_version", None)
        if version is not None and version != SYNTHETIC_VERSION:
            raise ValueError(
                f"this run used {name} version {version}; this fedbcs generates version "
                f"{SYNTHETIC_VERSION} (docs/data.md): start a new run, or install the fedbcs "
                "that made it"
            )
        return make_synthetic(
            name,
            seed=config.seed,
            n_train=config.n_train,
            n_test=config.n_test,
            image_size=config.image_size,
            sites=config.sites,
        )
    if name not in REAL_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if not config.data_root:
        raise ValueError(f"--dataset {name} reads real data: give --data-root DIR")
    load, _ = _real(name)
    extra = {"intensity": config.nuclei_intensity} if name == "nuclei" else {}
    return load(
        config.data_root,
        sites=config.sites,
        image_size=config.image_size,
        seed=config.seed,
        split_file=config.split_file,
        workers=workers,
        **extra,
    )


def check_data(dataset: str, data_root: str, sites=None, workers: int = 0):
    """A :class:`~fedbcs_fl.data.problems.Report` of a real data folder: counts and problems."""
    if dataset not in REAL_DATASETS:
        raise ValueError(f"check-data reads real data sets; valid: {', '.join(REAL_DATASETS)}")
    _, check = _real(dataset)
    return check(data_root, sites, workers=workers)


__all__ = [
    "DATASETS",
    "NUCLEI_INTENSITIES",
    "REAL_DATASETS",
    "SYNTHETIC_SITES",
    "SYNTHETIC_VERSION",
    "SiteData",
    "check_data",
    "load_sites",
    "make_synthetic",
]
