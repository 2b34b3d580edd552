"""Checks of a whole run configuration, beyond each setting's own declaration.

Each setting's type, choices and interval are declared on its
:class:`~fedbcs_fl.config.RunConfig` field (:mod:`fedbcs_fl.schema`) and checked there;
:meth:`RunConfig.resolved <fedbcs_fl.config.RunConfig.resolved>`, which every command and
both engines go through, checks every setting and then calls :func:`check_config`. So a bad
value (``--lr inf``, a NaN norm factor, a non-positive timeout, a hand-edited
``config.json``) stops a run with one line naming the setting, what it may be, and what it
got, before any data is read or model built.

What no one setting can say is checked here: the synthetic sites are generated in memory,
so a data set larger than this machine's memory is refused up front instead of being
swapped to death (``--n-train 1e9``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .data.sources import data_source

if TYPE_CHECKING:
    from .config import RunConfig


def physical_memory() -> int | None:
    """Bytes of memory of this machine (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_synthetic_size(config: RunConfig) -> None:
    """The synthetic sites are generated and held in memory: they must fit in this one."""
    from .data.synthetic import synthetic_nbytes  # torch: imported when a config is resolved

    needed = synthetic_nbytes(
        config.dataset, config.n_train, config.n_test, config.image_size, config.sites
    )
    memory = physical_memory()
    if memory is not None and needed > memory:
        raise ValueError(
            f"n_train {config.n_train}, n_test {config.n_test} and image_size "
            f"{config.image_size} ask for {needed / 2**30:.3g} GiB of synthetic images, held in "
            f"memory, and this machine has {memory / 2**30:.3g} GiB: use fewer or smaller images"
        )


def check_config(config: RunConfig) -> None:
    """Raise ``ValueError`` when ``config``'s settings, each valid, do not fit together: a
    synthetic data set must fit in this machine's memory."""
    if data_source(config.dataset).version is not None and config.image_size is not None:
        _check_synthetic_size(config)
