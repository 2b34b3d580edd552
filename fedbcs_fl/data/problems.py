"""What is wrong with a data folder, and the report of checking one.

Every problem found in a data folder becomes a :class:`Problem` naming the file and what is
wrong. ``check_*`` functions gather all of them into a :class:`Report`; loaders raise one
:class:`DataError` that lists all of them, so a user fixes the whole folder in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: the file or folder, and what is wrong with it."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DataError(ValueError):
    """The data cannot be used; ``problems`` lists every reason, each naming its file."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the data:\n{lines}")


@dataclass
class SiteStats:
    """Counts for one site, over its readable cases.

    For prostate a case is a patient volume and a slice is one axial slice; for nuclei
    both are one image.
    """

    name: str
    cases: int = 0
    slices: int = 0
    foreground_slices: int = 0
    foreground_pixels: int = 0
    pixels: int = 0

    @property
    def foreground_fraction(self) -> float:
        """Foreground pixels over all pixels (0 when there are none)."""
        return self.foreground_pixels / self.pixels if self.pixels else 0.0

    def add(self, mask: np.ndarray) -> None:
        """Count one case given its label array (2-D image or ``[slices, H, W]`` volume)."""
        foreground = mask > 0
        slices = foreground.reshape(-1, *foreground.shape[-2:])
        self.cases += 1
        self.slices += slices.shape[0]
        self.foreground_slices += int(slices.any(axis=(1, 2)).sum())
        self.foreground_pixels += int(foreground.sum())
        self.pixels += foreground.size


@dataclass
class Report:
    """The result of checking a data folder: per-site counts and every problem found."""

    dataset: str
    data_root: Path
    sites: list[SiteStats] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    unit: str = "slices"

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def raise_if_problems(self) -> None:
        """Raise :class:`DataError` listing every problem, if there is any."""
        if self.problems:
            raise DataError(self.problems)

    def format(self) -> str:
        """A table of per-site counts followed by the list of problems, for printing."""
        header = (
            f"{'site':<10} {'cases':>6} {self.unit + ' with fg / total':>24} {'fg fraction':>12}"
        )
        lines = [f"{self.dataset} at {self.data_root}", header]
        for s in self.sites:
            counts = f"{s.foreground_slices} / {s.slices}"
            lines.append(f"{s.name:<10} {s.cases:>6} {counts:>24} {s.foreground_fraction:>12.2%}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  - {problem}" for problem in self.problems)
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def site_report(dataset: str, data_root: Path, read: Mapping, problems, unit: str) -> Report:
    """A :class:`Report` from ``{site: {name: item}}`` whose items carry ``foreground``
    (None for an unreadable file) and the problems found."""
    report = Report(dataset, data_root, problems=list(problems), unit=unit)
    for site, items in read.items():
        stats = SiteStats(site)
        for item in items.values():
            if item.foreground is not None:
                stats.add(item.foreground)
        report.sites.append(stats)
    return report
