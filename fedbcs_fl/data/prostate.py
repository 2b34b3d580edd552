"""The six-site prostate MRI set, read as published by Liu et al. (2020, MS-Net / SAML).

Layout: ``<data_root>/<site>/CaseNN.nii.gz`` with ``CaseNN_segmentation.nii.gz`` (or
``_Segmentation``) beside it, for the sites BIDMC, HK, I2CVB, ISBI, ISBI_1.5 and UCL.

Preprocessing follows the authors' code (HarmoFL, FedBCS): per volume, intensities are
clipped at the 99th percentile and scaled from the minimum to [0, 1]; every axial slice
whose mask is non-empty gives one sample, the slice and its two neighbours stacked as
channels (repeating the end slice at the volume's ends); labels > 0 are foreground. Unlike
the authors, who shuffle slices, the split is by case, so no patient is in two splits.

Each case is decoded once, when the sites are loaded, and its samples kept in memory, so
no epoch reads NIfTI. ``workers`` decodes cases in parallel processes.

Example::

    sites = load_prostate("data/prostate", sites=["BIDMC", "HK"])
    write_split(sites, run_dir / "split.json")
    sites = load_prostate("data/prostate", split_file=run_dir / "split.json")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .base import SiteData
from .problems import DataError, Problem, Report, site_report
from .readers import NIFTI_SUFFIXES, clip_and_scale, format_values, read_volume
from .samples import assemble_sites, neighbour_slices, quantize, resize
from .site_folders import Case, broken_link, read_site_folders, select_sites
from .sources import data_source
from .splits import assign_split, check_fractions, load_split_file

# The source's declaration (sources.py): its sites, the paper's sample side, its channels.
SITES = data_source("prostate").sites
IMAGE_SIZE = data_source("prostate").defaults.image_size
CHANNELS = data_source("prostate").in_channels
# Some sources label the central gland and the peripheral zone apart; both are prostate.
LABELS = (0, 1, 2)
_MASK_SUFFIX = "_segmentation"


def find_cases(site_dir: Path) -> tuple[dict[str, tuple[Path, Path]], list[Problem]]:
    """``{case: (image, mask)}`` in a site folder, and the unpaired or duplicated files
    (``.nii`` beside ``.nii.gz``) and broken links."""
    if not site_dir.is_dir():
        return {}, [Problem(site_dir, "site folder is missing")]
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    problems = []
    for path in sorted(site_dir.iterdir()):
        stem = next((path.name[: -len(s)] for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
        if stem is None:
            continue
        if not path.is_file():
            problems += broken_link(path)
            continue
        if stem.lower().endswith(_MASK_SUFFIX):
            masks.setdefault(stem[: -len(_MASK_SUFFIX)], []).append(path)
        else:
            images.setdefault(stem, []).append(path)
    for kind, found in (("image", images), ("mask", masks)):
        problems += [
            Problem(paths[1], f"second {kind} for {case} (also {paths[0].name})")
            for case, paths in found.items()
            if len(paths) > 1
        ]
    problems += [
        Problem(paths[0], f"image has no mask (expected {case}{_MASK_SUFFIX}.nii.gz)")
        for case, paths in images.items()
        if case not in masks
    ]
    problems += [
        Problem(paths[0], f"mask has no image (expected {case}.nii.gz)")
        for case, paths in masks.items()
        if case not in images
    ]
    cases = {case: (paths[0], masks[case][0]) for case, paths in images.items() if case in masks}
    if not images and not masks:
        problems.append(Problem(site_dir, "no CaseNN.nii.gz volumes found"))
    return cases, problems


def _mask_problems(mask: np.ndarray, path: Path) -> list[Problem]:
    """Unexpected label values (anything but 0, 1, 2) or an empty mask."""
    values = np.unique(mask)
    unexpected = values[~np.isin(values, LABELS)]
    if unexpected.size:
        shown, allowed = format_values(unexpected), ", ".join(map(str, LABELS))
        return [Problem(path, f"mask has unexpected values {shown} (allowed labels: {allowed})")]
    if not values.any():
        return [Problem(path, "mask is empty (no voxel > 0)")]
    return []


def _read_case(job: tuple[Path, Path, int | None]) -> Case:
    """Read and check one case; with an image size, also build its samples at that size."""
    image_path, mask_path, image_size = job
    image, _, problems = read_volume(image_path)
    mask, _, mask_problems = read_volume(mask_path)
    problems += mask_problems
    if problems:
        return Case(problems)
    if mask.shape != image.shape:
        message = f"mask shape {mask.shape} does not match image shape {image.shape}"
        return Case([Problem(mask_path, f"{message} ({image_path.name})")])
    problems = _mask_problems(mask, mask_path)
    image, scale_problems = clip_and_scale(image, image_path)
    problems += scale_problems
    if problems:
        return Case(problems)
    # nibabel gives [x, y, z]; the authors (SimpleITK) slice [z, y, x], so do the same.
    foreground = mask.transpose(2, 1, 0) > 0
    if image_size is None:
        return Case(foreground=foreground)
    centre = np.flatnonzero(foreground.any(axis=(1, 2)))
    stacked = neighbour_slices(image.transpose(2, 1, 0), centre, 1)
    images, masks = resize(
        torch.from_numpy(stacked), torch.from_numpy(foreground[centre].astype(np.uint8)), image_size
    )
    return Case(foreground=foreground, images=quantize(images), masks=masks)


def check_prostate(
    data_root: str | Path, sites: Sequence[str] | None = None, workers: int = 0
) -> Report:
    """Check a prostate folder: per-site cases, slices and foreground, and every problem.

    Args:
        data_root: folder holding one folder per site.
        sites: site names to check (default: all six); an unknown name raises ValueError.
        workers: processes decoding volumes in parallel (default 0: in this process).
    """
    data_root = Path(data_root)
    names = select_sites(sites, SITES)
    read, problems = read_site_folders(data_root, names, find_cases, _read_case, (None,), workers)
    return site_report("prostate", data_root, read, problems, unit="slices")


def load_prostate(
    data_root: str | Path,
    sites: Sequence[str] | None = None,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    split: Sequence[float] = (0.64, 0.16, 0.20),
    augment: bool = True,
    split_file: str | Path | Mapping | None = None,
    workers: int = 0,
) -> list[SiteData]:
    """Load prostate sites as ``SiteData`` with train / val / test splits by case.

    Args:
        data_root: folder holding one folder per site.
        sites: site names to load (default: all six); an unknown name raises ValueError.
        image_size: side of the square samples (384 in the paper).
        seed: seeds the case split (per site, so adding a site leaves the others unchanged).
        split: train / val / test shares of each site's cases (the paper's 64/16/20).
        augment: random 90° rotations and flips on the train split.
        split_file: a split written by ``write_split`` (path or dict) to reuse instead of
            drawing one; it must list exactly the cases on disk.
        workers: processes decoding volumes in parallel (default 0: in this process).

    Images are float32 ``[3, image_size, image_size]`` in [0, 1], masks int64 {0, 1}.
    ``split_of(sites)`` / ``write_split(sites, path)`` give the split used.

    Raises:
        DataError: listing every problem in the data (or in ``split_file``).
    """
    check_fractions(split)
    names = select_sites(sites, SITES)
    given = load_split_file(split_file)
    read, problems = read_site_folders(
        Path(data_root), names, find_cases, _read_case, (image_size,), workers
    )
    splits = {}
    for site, cases in read.items():
        where = Path(data_root) / site
        splits[site], split_problems = assign_split(site, list(cases), split, seed, given, where)
        problems += split_problems
    if problems:
        raise DataError(problems)
    return assemble_sites(read, splits, channels=CHANNELS, size=image_size, augment=augment)
