"""Data sources by name: the embedded synthetic sets and the public real sets."""

from __future__ import annotations

from .base import SiteData
from .synthetic import SYNTHETIC_SITES, make_synthetic

REAL_DATASETS = ("prostate", "nuclei")
DATASETS = (*SYNTHETIC_SITES, *REAL_DATASETS)


def _require_root(config) -> str:
    if not config.data_root:
        raise ValueError(f"--dataset {config.dataset} reads real data: give --data-root DIR")
    return config.data_root


def load_sites(config, workers: int = 0) -> list[SiteData]:
    """The sites of ``config.dataset`` (a resolved :class:`~fedbcs_fl.config.RunConfig`).

    Real data sets raise :class:`~fedbcs_fl.data.checks.DataError` (a ValueError) listing
    every problem in the folder.
    """
    name = config.dataset
    if name in SYNTHETIC_SITES:
        return make_synthetic(
            name,
            seed=config.seed,
            n_train=config.n_train,
            n_test=config.n_test,
            image_size=config.image_size,
            sites=config.sites,
        )
    if name == "prostate":
        from .prostate import load_prostate

        return load_prostate(
            _require_root(config),
            sites=config.sites,
            image_size=config.image_size,
            seed=config.seed,
            split_file=config.split_file,
            workers=workers,
        )
    if name == "nuclei":
        from .nuclei import load_nuclei

        return load_nuclei(
            _require_root(config),
            sites=config.sites,
            image_size=config.image_size,
            seed=config.seed,
            split_file=config.split_file,
            workers=workers,
        )
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def check_data(dataset: str, data_root: str, sites=None, workers: int = 0):
    """A :class:`~fedbcs_fl.data.checks.Report` of a real data folder: counts and problems."""
    if dataset == "prostate":
        from .prostate import check_prostate

        return check_prostate(data_root, sites, workers=workers)
    if dataset == "nuclei":
        from .nuclei import check_nuclei

        return check_nuclei(data_root, sites, workers=workers)
    raise ValueError(f"check-data reads real data sets; valid: {', '.join(REAL_DATASETS)}")


__all__ = [
    "DATASETS",
    "REAL_DATASETS",
    "SYNTHETIC_SITES",
    "SiteData",
    "check_data",
    "load_sites",
    "make_synthetic",
]
