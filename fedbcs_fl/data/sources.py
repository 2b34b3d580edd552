"""The data sources by name: what each holds, how a run on it is set up, how to read it.

A :class:`DataSource` declares its sites, its number of classes, the input channels of its
images, the run settings it implies where a config leaves them unset (image size,
optimiser, learning rate, momentum, τ) and how to load and check it. Every engine and
command reads the model's ``in_channels`` and ``num_classes`` from here, so a new source
(registered in :data:`DATA_SOURCES`) needs no change anywhere else.

An unknown name raises ``ValueError`` listing the valid ones.

Example:
    >>> source = data_source("synthetic-prostate")
    >>> source.sites[:2], source.num_classes, source.in_channels, source.defaults.tau
    (('site-A', 'site-B'), 2, 3, 0.4)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import nuclei, prostate
from .base import SiteData
from .problems import Report
from .synthetic import SYNTHETIC_SITES, SYNTHETIC_VERSION, make_synthetic

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class RunDefaults:
    """The settings a run on a source takes where its config leaves them unset (None).

    Defaults: ``image_size`` 64, ``optimizer`` "adam", ``lr`` 1e-3, ``momentum`` 0.9 (SGD's;
    Adam ignores it), ``tau`` 0.1 (FedBCS's contrastive temperature).
    """

    image_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    tau: float = 0.1


@dataclass(frozen=True)
class DataSource:
    """One data set that runs can train on.

    Args:
        name: what ``--dataset`` calls it.
        sites: its site names in canonical order (one client each).
        num_classes: classes of its masks, background included.
        in_channels: channels of its images, i.e. of the model's input.
        load: ``load(config, workers)`` gives the sites ``config`` asks for
            (``workers``: processes decoding files, where there are files).
        defaults: the run settings it implies (:class:`RunDefaults`).
        check: ``check(data_root, sites, workers=...)`` gives a
            :class:`~fedbcs_fl.data.problems.Report` of a data folder; None (default) for a
            source that reads no files.
        version: the version of the generator (recorded as a run's ``data_version``); None
            (default) for data read from files.
        gray_channel: the channel pictures of it show in gray (e.g. the centre of three
            slices); None (default): its images are shown as RGB.
    """

    name: str
    sites: tuple[str, ...]
    num_classes: int
    in_channels: int
    load: Callable[[RunConfig, int], list[SiteData]]
    defaults: RunDefaults = field(default_factory=RunDefaults)
    check: Callable[..., Report] | None = None
    version: int | None = None
    gray_channel: int | None = None

    @property
    def reads_files(self) -> bool:
        """True when the source is read from a data folder (``--data-root``)."""
        return self.check is not None


def _generate(config: RunConfig, workers: int) -> list[SiteData]:
    """The sites of a synthetic source, generated from the run's seed (``workers`` unused:
    generation needs no files)."""
    version, current = config.data_version, SYNTHETIC_VERSION[config.dataset]
    if version is not None and version != current:
        raise ValueError(
            f"this run used {config.dataset} version {version}; this fedbcs generates version "
            f"{current} (docs/data.md): start a new run, or install the fedbcs that made it"
        )
    return make_synthetic(
        config.dataset,
        seed=config.seed,
        n_train=config.n_train,
        n_test=config.n_test,
        image_size=config.image_size,
        sites=config.sites,
    )


def _reader_arguments(config: RunConfig, workers: int) -> dict:
    """The arguments every reader of a data folder takes from a run's config."""
    if not config.data_root:
        raise ValueError(f"--dataset {config.dataset} reads real data: give --data-root DIR")
    return {
        "data_root": config.data_root,
        "sites": config.sites,
        "image_size": config.image_size,
        "seed": config.seed,
        "split_file": config.split_file,
        "workers": workers,
    }


def _load_prostate(config: RunConfig, workers: int) -> list[SiteData]:
    return prostate.load_prostate(**_reader_arguments(config, workers))


def _load_nuclei(config: RunConfig, workers: int) -> list[SiteData]:
    arguments = _reader_arguments(config, workers)
    return nuclei.load_nuclei(**arguments, intensity=config.nuclei_intensity)


# Paper section 4.1: SGD 0.01 for nuclei, Adam 1e-4 for prostate, weight decay 1e-4,
# batch 6; τ = 0.005 (nuclei) and 0.4 (prostate) are the paper's best (section 4.2).
# The released code's SGD has no momentum (nuclei: 0); elsewhere SGD, when chosen, gets 0.9.
# The synthetic sets train for few rounds on a CPU, so they use Adam 1e-3 for every method.
DATA_SOURCES: dict[str, DataSource] = {
    source.name: source
    for source in (
        DataSource(
            "synthetic-nuclei",
            sites=tuple(SYNTHETIC_SITES["synthetic-nuclei"]),
            num_classes=2,
            in_channels=3,
            load=_generate,
            defaults=RunDefaults(tau=0.005),
            version=SYNTHETIC_VERSION["synthetic-nuclei"],
        ),
        DataSource(
            "synthetic-prostate",
            sites=tuple(SYNTHETIC_SITES["synthetic-prostate"]),
            num_classes=2,
            in_channels=3,
            load=_generate,
            defaults=RunDefaults(tau=0.4),
            version=SYNTHETIC_VERSION["synthetic-prostate"],
            gray_channel=1,
        ),
        DataSource(
            "prostate",
            sites=prostate.SITES,
            num_classes=2,
            in_channels=prostate.CHANNELS,
            load=_load_prostate,
            defaults=RunDefaults(
                image_size=prostate.IMAGE_SIZE, optimizer="adam", lr=1e-4, tau=0.4
            ),
            check=prostate.check_prostate,
            gray_channel=1,
        ),
        DataSource(
            "nuclei",
            sites=nuclei.DOMAINS,
            num_classes=2,
            in_channels=nuclei.CHANNELS,
            load=_load_nuclei,
            defaults=RunDefaults(
                image_size=nuclei.IMAGE_SIZE, optimizer="sgd", lr=1e-2, momentum=0.0, tau=0.005
            ),
            check=nuclei.check_nuclei,
        ),
    )
}
"""Every data source by name: the embedded synthetic sets, then the public real sets."""


def data_source(name: str) -> DataSource:
    """The source called ``name``; ``ValueError`` listing the valid names if there is none."""
    if name not in DATA_SOURCES:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATA_SOURCES)}")
    return DATA_SOURCES[name]


def file_sources() -> list[str]:
    """The names of the sources read from a data folder (those ``check-data`` checks)."""
    return [name for name, source in DATA_SOURCES.items() if source.reads_files]


def load_sites(config: RunConfig, workers: int = 0) -> list[SiteData]:
    """The sites of ``config.dataset`` (a resolved :class:`~fedbcs_fl.config.RunConfig`).

    Real data sets raise :class:`~fedbcs_fl.data.problems.DataError` (a ValueError) listing
    every problem in the folder. A site whose images have other channels than the source
    declares raises ``ValueError``: the model is built from the declaration.
    """
    source = data_source(config.dataset)
    sites = source.load(config, workers)
    for site in sites:
        # Reading a sample may draw an augmentation: leave the global RNG as it was.
        with torch.random.fork_rng(devices=[]):
            channels = site.train[0][0].shape[0] if len(site.train) else source.in_channels
        if channels != source.in_channels:
            raise ValueError(
                f"site {site.name} has {channels} channels; {source.name} declares "
                f"in_channels {source.in_channels}"
            )
    return sites


def check_data(
    dataset: str, data_root: str | Path, sites: Sequence[str] | None = None, workers: int = 0
) -> Report:
    """A :class:`~fedbcs_fl.data.problems.Report` of a data folder: counts and problems."""
    source = data_source(dataset)
    if source.check is None:
        raise ValueError(f"check-data reads real data sets; valid: {', '.join(file_sources())}")
    return source.check(data_root, sites, workers=workers)
