"""What each run setting may be, checked before any data is read or model built.

:func:`check_config` is called by :meth:`RunConfig.resolved <fedbcs_fl.config.RunConfig.resolved>`,
which every command and both engines go through, so a bad value (``--lr inf``, a NaN norm
factor, a non-positive timeout, a hand-edited ``config.json``) stops a run with one line
naming the setting, what it may be, and what it got.

Sizes have bounds too, each with its reason: the synthetic sites are generated in memory,
so a data set larger than this machine's memory is refused up front instead of being
swapped to death (``--n-train 1e9``).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from .data.sources import data_source
from .data.synthetic import synthetic_nbytes

if TYPE_CHECKING:
    from .config import RunConfig

# Integer settings and the interval each may be in; None (where allowed) means "default".
INTEGER_RANGES: dict[str, str] = {
    "rounds": "[1, inf)",
    "local_epochs": "[1, inf)",
    "clients_per_round": "[1, inf)",
    "batch_size": "[1, inf)",
    "eval_batch_size": "[1, inf)",
    # Each client's shuffling generator is seeded with seed·1000 + its index, a 64-bit seed.
    "seed": "[0, 4294967295]",
    # The paper's sides are 256 (nuclei) and 384 (prostate); the UNet's first stage alone
    # holds init_features·S² floats per image, 1 GiB at S = 8192 and 16 features.
    "image_size": "[1, 8192]",
    "n_train": "[1, inf)",
    "n_test": "[1, inf)",
    # The UNet's parameters grow with its square: 7.8 M at 32 (the paper), 8 G at 1024.
    "init_features": "[1, 1024]",
    "eval_every": "[1, inf)",
    "checkpoint_every": "[1, inf)",
    "screen_max_examples": "[1, inf)",
}
FLOAT_RANGES: dict[str, str] = {
    "lr": "(0, inf)",
    "weight_decay": "[0, inf)",
    "momentum": "[0, 1]",
    "client_timeout": "(0, inf)",
    "screen_norm_factor": "[0, inf)",  # 0: the norm check is off
}
NONE_MEANS_DEFAULT = ("clients_per_round", "image_size", "lr", "momentum", "client_timeout")


def check_interval(name: str, value: float, interval: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is finite and in ``interval``,
    written as text, e.g. ``"(0, inf)"`` or ``"[0, 1]"``."""
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    if not (above and below and math.isfinite(value)):  # NaN fails every comparison
        raise ValueError(f"{name} must be in {interval}; got {value}")


def _check_number(name: str, value: Any, interval: str, integer: bool) -> None:
    if value is None and name in NONE_MEANS_DEFAULT:
        return
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}; got {value!r}")
    check_interval(name, value, interval)


def physical_memory() -> int | None:
    """Bytes of memory of this machine (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_synthetic_size(config: RunConfig) -> None:
    """The synthetic sites are generated and held in memory: they must fit in this one."""
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
    """Raise ``ValueError`` naming the first setting of ``config`` that is out of range.

    Every number must be finite and in its interval (:data:`INTEGER_RANGES`,
    :data:`FLOAT_RANGES`); a synthetic data set must fit in this machine's memory.
    """
    for name, interval in INTEGER_RANGES.items():
        _check_number(name, getattr(config, name), interval, integer=True)
    for name, interval in FLOAT_RANGES.items():
        _check_number(name, getattr(config, name), interval, integer=False)
    if data_source(config.dataset).version is not None and config.image_size is not None:
        _check_synthetic_size(config)
