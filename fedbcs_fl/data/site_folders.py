"""The walk over a data root with one folder per site, shared by the real-data loaders.

A loader says how to find the cases in one site folder (``find``) and how to read one case
(``read``); :func:`read_site_folders` does the rest: every site folder, every case read
(in worker processes when asked), and every problem gathered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .pool import map_jobs
from .problems import Problem


@dataclass
class Case:
    """What reading one case gives: its problems, or its foreground and its samples.

    A case is a patient volume (prostate) or one image (nuclei).
    """

    problems: list[Problem] = field(default_factory=list)
    foreground: np.ndarray | None = None  # bool, native resolution: [H, W] or [slices, H, W]
    images: torch.Tensor | None = None  # uint8 [N, C, S, S]; None when only checked
    masks: torch.Tensor | None = None  # uint8 [N, S, S]


def broken_link(path: Path) -> list[Problem]:
    """A problem for a symbolic link whose target does not exist (none for any other path):
    a walk that skips what is not a file would otherwise lose the case without a word."""
    if path.is_symlink() and not path.exists():
        return [Problem(path, f"broken symbolic link (to {os.readlink(path)})")]
    return []


def select_sites(sites: Sequence[str] | None, valid: Sequence[str]) -> list[str]:
    """Canonical site names for ``sites`` (all of ``valid`` when None), matched ignoring case.

    Raises ``ValueError`` naming the valid sites when one is unknown.
    """
    if sites is None:
        return list(valid)
    by_lower = {name.lower(): name for name in valid}
    unknown = [name for name in sites if name.lower() not in by_lower]
    if unknown:
        raise ValueError(f"unknown site(s) {', '.join(unknown)}; valid sites: {', '.join(valid)}")
    return [by_lower[name.lower()] for name in sites]


def read_site_folders(
    data_root: Path,
    sites: Sequence[str],
    find: Callable[[Path], tuple[dict[str, tuple[Path, ...]], list[Problem]]],
    read: Callable[[tuple], Case],
    options: tuple,
    workers: int,
) -> tuple[dict[str, dict[str, Case]], list[Problem]]:
    """Every case of every folder ``data_root/<site>`` read, and the problems found.

    Args:
        data_root: the folder holding one folder per site.
        sites: the site folders to read, in order.
        find: ``find(site_dir)`` gives the site's cases, ``{case: (file, ...)}``, and the
            problems of the folder itself (missing, unpaired or duplicated files).
        read: ``read((*files, *options))`` reads and checks one case; a module-level
            function, so that worker processes can run it.
        options: what ``read`` needs beside the files (e.g. the image size).
        workers: processes reading cases in parallel (0: in this process).

    Returns:
        ``{site: {case: Case}}`` and the problems: the folders' first, then the cases'.
    """
    if not data_root.is_dir():
        return {}, [Problem(data_root, "data root is not a folder")]
    problems = []
    found = {}
    for site in sites:
        found[site], site_problems = find(data_root / site)
        problems += site_problems
    jobs = [(*files, *options) for cases in found.values() for files in cases.values()]
    results = iter(map_jobs(read, jobs, workers))
    cases = {site: {name: next(results) for name in names} for site, names in found.items()}
    problems += [
        p for by_name in cases.values() for case in by_name.values() for p in case.problems
    ]
    return cases, problems
