"""The data sources by name: what each holds, how a run on it is set up, how to read it.

A :class:`DataSource` declares its sites, its number of classes, the input channels of its
images, the run settings it implies where a config leaves them unset (image size,
optimiser, learning rate, momentum, τ) and how to load and check it. A source of your own
data (``folder``) declares neither sites, classes nor channels: it reads them from the
data folder. :meth:`DataSource.model_shape` gives a run's ``in_channels`` and
``num_classes`` either way; ``RunConfig.resolved`` records them in the config, and every
engine and command builds the model from the config, so a new source (registered in
:data:`DATA_SOURCES`) needs no change anywhere else.

This module imports no torch, nor numpy: ``fedbcs --help`` lists the sources without them
(issue 18). A source's loader module is imported when the source is first loaded or
checked.

An unknown name raises ``ValueError`` listing the valid ones.

Example:
    >>> source = data_source("synthetic-prostate")
    >>> source.sites[:2], source.num_classes, source.in_channels, source.defaults.tau
    (('site-A', 'site-B'), 2, 3, 0.4)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .synthetic_sites import SYNTHETIC_SITES, SYNTHETIC_VERSION

if TYPE_CHECKING:
    from ..config import RunConfig
    from .base import SiteData
    from .problems import Report

# How real nuclei images are scaled to [0, 1] (``nuclei_intensity``): per image from its
# minimum to its maximum (the released code), or by the pixel type's maximum.
NUCLEI_INTENSITIES = ("minmax", "dtype")


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
        sites: its site names in canonical order (one client each); empty for a source
            whose sites are the folders of its data root (``list_sites``).
        num_classes: classes of its masks, background included; None for a source that
            reads them from its data (``read_shape``).
        in_channels: channels of its images, i.e. of the model's input; None likewise.
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
        read_shape: ``read_shape(config)`` gives ``(in_channels, num_classes)`` as the
            data declares them, for a source that declares neither; None (default).
        list_sites: ``list_sites(data_root)`` gives the site names found there, for a
            source without fixed ``sites``; None (default).
        slices: True for a source that stacks ``config.slice_neighbours`` neighbouring
            slices as channels; default False (the setting must then be 0).
    """

    name: str
    sites: tuple[str, ...]
    num_classes: int | None
    in_channels: int | None
    load: Callable[[RunConfig, int], list[SiteData]]
    defaults: RunDefaults = field(default_factory=RunDefaults)
    check: Callable[..., Report] | None = None
    version: int | None = None
    gray_channel: int | None = None
    read_shape: Callable[[RunConfig], tuple[int, int]] | None = None
    list_sites: Callable[[str | Path], list[str]] | None = None
    slices: bool = False

    @property
    def reads_files(self) -> bool:
        """True when the source is read from a data folder (``--data-root``)."""
        return self.check is not None

    def site_names(self, data_root: str | Path | None) -> list[str]:
        """The source's sites: the declared ones, or those found in ``data_root``."""
        if self.list_sites is None:
            return list(self.sites)
        if not data_root:
            raise ValueError(f"--dataset {self.name} finds its sites in --data-root: give it")
        return self.list_sites(data_root)

    def model_shape(self, config: RunConfig) -> tuple[int, int]:
        """``(in_channels, num_classes)`` of a run on this source: those ``config`` gives,
        else the declared ones or, for a source that declares none, those its data
        declares (read from ``config.data_root``).

        Raises:
            ValueError: the config contradicts the declaration, sets ``slice_neighbours``
                for a source without slices, or gives a data-declared source neither the
                values nor a data root to read them from.
        """
        if config.slice_neighbours and not self.slices:
            raise ValueError(
                f"slice_neighbours applies to volumes (--dataset folder); {self.name} "
                f"has fixed channels, got {config.slice_neighbours}"
            )
        given = (config.in_channels, config.num_classes)
        if self.read_shape is None:
            declared = (self.in_channels, self.num_classes)
            for name, value, fixed in zip(
                ("in_channels", "num_classes"), given, declared, strict=True
            ):
                if value is not None and value != fixed:
                    raise ValueError(f"{self.name} has {name} {fixed}; the config says {value}")
            return declared
        if None not in given:
            return given
        if not config.data_root:
            raise ValueError(
                f"--dataset {self.name} reads in_channels and num_classes from its data: give "
                "--data-root (a Flower ServerApp, which has no data, takes the run config's "
                "in-channels and num-classes)"
            )
        found = self.read_shape(config)
        return tuple(f if g is None else g for g, f in zip(given, found, strict=True))


def _deferred(module: str, function: str) -> Callable:
    """``function`` of this package's loader ``module``, imported when first called."""

    def call(*args, **kwargs):
        loader = importlib.import_module(f".{module}", __package__)
        return getattr(loader, function)(*args, **kwargs)

    return call


def _generate(config: RunConfig, workers: int) -> list[SiteData]:
    """The sites of a synthetic source, generated from the run's seed (``workers`` unused:
    generation needs no files)."""
    from .synthetic import make_synthetic

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
    from .prostate import load_prostate

    return load_prostate(**_reader_arguments(config, workers))


def _load_folder(config: RunConfig, workers: int) -> list[SiteData]:
    """The sites of a folder of your own data, checked against the run's ``in_channels``
    and ``num_classes`` (a Flower node's data against the run config's)."""
    from .folder import load_folder

    found = _folder_shape(config)
    if found != (config.in_channels, config.num_classes):
        raise ValueError(
            f"the data at {config.data_root} has in_channels {found[0]} and num_classes "
            f"{found[1]} (dataset.json); the run has {config.in_channels} and "
            f"{config.num_classes}"
        )
    arguments = _reader_arguments(config, workers)
    return load_folder(**arguments, slice_neighbours=config.slice_neighbours)


def _folder_shape(config: RunConfig) -> tuple[int, int]:
    from .folder import model_shape

    return model_shape(config.data_root, config.sites, config.slice_neighbours)


def _load_nuclei(config: RunConfig, workers: int) -> list[SiteData]:
    from .nuclei import load_nuclei

    arguments = _reader_arguments(config, workers)
    return load_nuclei(**arguments, intensity=config.nuclei_intensity)


# Paper section 4.1: SGD 0.01 for nuclei, Adam 1e-4 for prostate, weight decay 1e-4,
# batch 6, samples of 256 (nuclei) and 384 pixels (prostate); τ = 0.005 (nuclei) and 0.4
# (prostate) are the paper's best (section 4.2).
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
            "synthetic-prostate-zones",
            sites=tuple(SYNTHETIC_SITES["synthetic-prostate-zones"]),
            num_classes=3,
            in_channels=3,
            load=_generate,
            defaults=RunDefaults(tau=0.4),
            version=SYNTHETIC_VERSION["synthetic-prostate-zones"],
            gray_channel=1,
        ),
        DataSource(
            "prostate",
            sites=("BIDMC", "HK", "I2CVB", "ISBI", "ISBI_1.5", "UCL"),
            num_classes=2,
            in_channels=3,  # an axial slice and its two neighbours
            load=_load_prostate,
            defaults=RunDefaults(image_size=384, optimizer="adam", lr=1e-4, tau=0.4),
            check=_deferred("prostate", "check_prostate"),
            gray_channel=1,
        ),
        DataSource(
            "nuclei",
            sites=("TCIA", "CRC", "KIRC", "TNBC"),
            num_classes=2,
            in_channels=3,  # RGB
            load=_load_nuclei,
            defaults=RunDefaults(image_size=256, optimizer="sgd", lr=1e-2, momentum=0.0, tau=0.005),
            check=_deferred("nuclei", "check_nuclei"),
        ),
        DataSource(
            "folder",
            sites=(),
            num_classes=None,
            in_channels=None,
            load=_load_folder,
            defaults=RunDefaults(image_size=128),
            check=_deferred("folder", "check_folder"),
            read_shape=_folder_shape,
            list_sites=_deferred("folder", "site_names"),
            slices=True,
        ),
    )
}
"""Every data source by name: the embedded synthetic sets, the public real sets, then
``folder``, your own data in nnU-Net's layout."""


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
    every problem in the folder. A site whose images have other channels than the run's
    ``in_channels`` raises ``ValueError``: the model is built from the config.
    """
    import torch

    config = config.resolved()
    source = data_source(config.dataset)
    sites = source.load(config, workers)
    for site in sites:
        # Reading a sample may draw an augmentation: leave the global RNG as it was.
        with torch.random.fork_rng(devices=[]):
            channels = site.train[0][0].shape[0] if len(site.train) else config.in_channels
        if channels != config.in_channels:
            raise ValueError(
                f"site {site.name} has {channels} channels; {source.name} declares "
                f"in_channels {config.in_channels}"
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
