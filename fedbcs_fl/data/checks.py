"""What the real-data loaders share: problem reporting, case-level splits, in-memory samples.

Every problem found in a data folder becomes a :class:`Problem` naming the file and what is
wrong. ``check_*`` functions gather all of them into a :class:`Report`; loaders raise one
:class:`DataError` that lists all of them, so a user fixes the whole folder in one pass.

Splits are by case (a patient volume, or a histology image): a split is the dict
``{site: {"train": [case, ...], "val": [...], "test": [...]}}``, written as JSON with
:func:`write_split` and read back with :func:`read_split`.
"""

from __future__ import annotations

import json
import multiprocessing
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fedbcs_fl.data.base import SiteData

SPLIT_NAMES = ("train", "val", "test")

Split = dict[str, dict[str, list[str]]]


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

    Returns the site's split and the problems: the site missing from the split, a case in
    two splits, a listed case not on disk, or a case on disk that the split does not list.
    """
    if site not in split:
        return {}, [Problem(source, f"split has no entry for site {site}")]
    part = {name: list(split[site].get(name, [])) for name in SPLIT_NAMES}
    problems = []
    listed = [case for name in SPLIT_NAMES for case in part[name]]
    for case in sorted({case for case in listed if listed.count(case) > 1}):
        problems.append(Problem(source, f"{site}: case {case} is in more than one split"))
    for case in sorted(set(listed) - set(cases)):
        problems.append(Problem(source, f"{site}: case {case} is listed but not in the data"))
    for case in sorted(set(cases) - set(listed)):
        problems.append(Problem(source, f"{site}: case {case} is in the data but in no split"))
    return part, problems


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


def resize(
    images: torch.Tensor, masks: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize ``[N, C, H, W]`` float images (bilinear) and ``[N, H, W]`` masks (nearest) to size².

    Images use antialiasing when shrinking, as PIL and torchvision do; masks keep their
    label values because nearest-neighbour sampling never mixes them.
    """
    if images.shape[-2:] == (size, size):
        return images, masks
    images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    masks = F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest-exact")
    return images.clamp_(0, 1), masks[:, 0].to(torch.uint8)


class SegmentationSamples(Dataset):
    """Preprocessed 2-D samples held in memory, with optional rot90/flip augmentation.

    Images are stored as uint8 (steps of 1/255, as the authors' preprocessing wrote 8-bit
    images) to keep the six prostate sites at 384² within about 1 GB; items come out as
    float32 ``[C, H, W]`` in [0, 1] and int64 ``[H, W]``. ``cases[i]`` names the case that
    sample ``i`` came from and ``cases`` lists each case once.

    Augmentation draws from torch's global RNG: ``torch.manual_seed`` makes it repeatable,
    and DataLoader worker processes each get their own seed from it. The dataset is plain
    tensors and so pickles for worker processes.
    """

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        sample_cases: Sequence[str],
        augment: bool = False,
    ):
        self.images = images
        self.masks = masks
        self.sample_cases = list(sample_cases)
        self.cases = list(dict.fromkeys(sample_cases))
        self.augment = augment

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float() / 255
        mask = self.masks[index].long()
        if self.augment:
            image, mask = rot90_flip(image, mask)
        return image, mask


def rot90_flip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' training augmentation, applied to ``[C, H, W]`` image and ``[H, W]`` mask.

    As in their ``RandomRotate90`` and ``RandomFlip``: rotate by ``k`` quarter turns with
    ``k`` uniform in 0..4 (Python's inclusive ``randint``, so no turn has weight 2/5), then
    with probability 0.75 flip rows, columns or both, each with weight 1/3.
    """
    k = int(torch.randint(0, 5, ()))
    image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
    if torch.rand(()) < 0.75:
        dims = [(-2,), (-1,), (-2, -1)][int(torch.randint(0, 3, ()))]
        image, mask = torch.flip(image, dims), torch.flip(mask, dims)
    return image.contiguous(), mask.contiguous()


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8 (nearest of the 256 levels), for storage."""
    return (images * 255).round_().to(torch.uint8)


def map_jobs(function: Callable, jobs: Iterable, workers: int) -> list:
    """``[function(job) for job in jobs]``, in ``workers`` processes when ``workers > 0``.

    Decoding compressed volumes and images is the slow part of loading and is independent
    per file, so it is what worker processes speed up. They are spawned rather than forked
    so that no OpenMP or thread state of the parent is inherited.
    """
    if workers <= 0:
        return [function(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(function, jobs))


def stack_samples(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor, str]], channels: int, size: int, augment: bool
) -> SegmentationSamples:
    """One dataset from per-case ``(images [N, C, S, S], masks [N, S, S], case)`` parts."""
    if not parts:
        return SegmentationSamples(
            torch.empty(0, channels, size, size, dtype=torch.uint8),
            torch.empty(0, size, size, dtype=torch.uint8),
            [],
            augment,
        )
    images = torch.cat([images for images, _, _ in parts])
    masks = torch.cat([masks for _, masks, _ in parts])
    sample_cases = [case for images, _, case in parts for _ in range(images.shape[0])]
    return SegmentationSamples(images, masks, sample_cases, augment)


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


def assemble_sites(
    samples: Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]],
    splits: Mapping[str, Mapping[str, Sequence[str]]],
    channels: int,
    size: int,
    augment: bool,
) -> list[SiteData]:
    """``SiteData`` per site from per-case samples and the case split; train alone augments.

    A site whose validation split is empty gets ``val=None``.
    """
    sites = []
    for site, by_case in samples.items():
        datasets = {
            name: stack_samples(
                [(*by_case[case], case) for case in splits[site][name]],
                channels,
                size,
                augment and name == "train",
            )
            for name in SPLIT_NAMES
        }
        val = datasets["val"] if len(datasets["val"]) else None
        sites.append(SiteData(site, datasets["train"], datasets["test"], val))
    return sites


def load_split_file(split_file: str | Path | Mapping | None) -> tuple[Split, Path] | None:
    """A split to reuse and where it came from: a JSON file, a dict (``<dict>``), or None."""
    if split_file is None:
        return None
    if isinstance(split_file, Mapping):
        return dict(split_file), Path("<split>")
    return read_split(split_file), Path(split_file)
