"""Case-level splits: drawn from a seed, written to JSON, read back and checked.

Splits are by case (a patient volume, or a histology image): a split is the dict
``{site: {"train": [case, ...], "val": [...], "test": [...]}}``, written as JSON with
:func:`write_split` and read back with :func:`read_split`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .base import SiteData
from .problems import DataError, Problem

SPLIT_NAMES = ("train", "val", "test")

Split = dict[str, dict[str, list[str]]]


def split_cases(
    cases: Sequence[str], fractions: Sequence[float], seed: int, site: str
) -> dict[str, list[str]]:
    """Shuffle ``cases`` with a generator seeded by ``seed`` and ``site``, then cut them.

    ``fractions`` are the train / val / test shares. Every split with a non-zero share gets
    at least one case and train takes what the rounding leaves, so the result depends only
    on the seed, the site name and the set of case names (not on their order on disk).
    """
    n = len(cases)
    _, val_share, test_share = fractions
    n_val = max(1, round(n * val_share)) if val_share > 0 else 0
    n_test = max(1, round(n * test_share)) if test_share > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} case(s) are too few for the split {tuple(fractions)}")
    rng = np.random.default_rng([seed, zlib.crc32(site.encode())])
    order = [sorted(cases)[i] for i in rng.permutation(n)]
    return {
        "train": sorted(order[n_val + n_test :]),
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


def check_fractions(fractions: Sequence[float]) -> None:
    """Raise ``ValueError`` unless ``fractions`` are three shares that sum to 1."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split must be three non-negative shares summing to 1, got {fractions}")
    if fractions[0] <= 0 or fractions[2] <= 0:
        raise ValueError(f"split needs non-zero train and test shares, got {fractions}")


def reuse_split(
    split: Mapping[str, Mapping[str, Sequence[str]]],
    site: str,
    cases: Sequence[str],
    source: Path,
) -> tuple[dict[str, list[str]], list[Problem]]:
    """One site's part of a previously written split, checked against the cases on disk.

    Returns the site's split and the problems: the site missing from the split, an empty
    train or test split, a case listed twice or in two splits, a listed case not on disk,
    or a case on disk that the split does not list.
    """
    if site not in split:
        return {}, [Problem(source, f"split has no entry for site {site}")]
    part = {name: list(split[site].get(name, [])) for name in SPLIT_NAMES}
    problems = [
        Problem(source, f"{site}: the {name} split lists no case")
        for name in ("train", "test")
        if not part[name]
    ]
    listed = [case for name in SPLIT_NAMES for case in part[name]]
    for case in sorted({case for case in listed if listed.count(case) > 1}):
        where = [name for name in SPLIT_NAMES if case in part[name]]
        if len(where) > 1:
            problems.append(Problem(source, f"{site}: case {case} is in more than one split"))
        else:
            problems.append(Problem(source, f"{site}: case {case} is listed twice in {where[0]}"))
    for case in sorted(set(listed) - set(cases)):
        problems.append(Problem(source, f"{site}: case {case} is listed but not in the data"))
    for case in sorted(set(cases) - set(listed)):
        problems.append(Problem(source, f"{site}: case {case} is in the data but in no split"))
    return part, problems


def assign_split(
    site: str,
    cases: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    given: tuple[Split, Path] | None,
    where: Path,
) -> tuple[dict[str, list[str]], list[Problem]]:
    """A site's split: the ``given`` ``(split, its file)`` checked against ``cases``, or a
    fresh seeded one; a problem (about ``where``) when there are too few cases for it."""
    if given is not None:
        return reuse_split(given[0], site, cases, given[1])
    if not cases:
        return {}, []  # the site's folder already has its own problem
    try:
        return split_cases(cases, fractions, seed, site), []
    except ValueError as exc:
        return {}, [Problem(where, str(exc))]


def split_of(sites: Sequence[SiteData]) -> Split:
    """The case-level split of loaded sites, ``{site: {"train": [...], "val": [...], ...}}``."""
    return {
        site.name: {
            name: [] if getattr(site, name) is None else list(getattr(site, name).cases)
            for name in SPLIT_NAMES
        }
        for site in sites
    }


def write_split(sites_or_split: Sequence[SiteData] | Mapping, path: str | Path) -> Split:
    """Write the split of loaded sites (or a split dict) to ``path`` as JSON; return it."""
    if isinstance(sites_or_split, Mapping):
        split = {site: dict(parts) for site, parts in sites_or_split.items()}
    else:
        split = split_of(sites_or_split)
    Path(path).write_text(json.dumps(split, indent=2) + "\n")
    return split


def read_split(path: str | Path) -> Split:
    """Read a split written by :func:`write_split`; ``DataError`` if it cannot be parsed."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError([Problem(path, f"cannot read split file: {exc}")]) from None
    well_formed = isinstance(split, dict) and all(
        isinstance(parts, dict)
        and set(parts) <= set(SPLIT_NAMES)
        and all(isinstance(c, list) and all(isinstance(x, str) for x in c) for c in parts.values())
        for parts in split.values()
    )
    if not well_formed:
        raise DataError([Problem(path, 'expected {site: {"train": [case, ...], ...}}')])
    return split


def load_split_file(split_file: str | Path | Mapping | None) -> tuple[Split, Path] | None:
    """A split to reuse and where it came from: a JSON file, a dict (``<dict>``), or None."""
    if split_file is None:
        return None
    if isinstance(split_file, Mapping):
        return dict(split_file), Path("<split>")
    return read_split(split_file), Path(split_file)
