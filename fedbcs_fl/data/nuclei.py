"""The four-domain histology nuclei set: TCIA, CRC, KIRC and TNBC, one client each.

Layout per domain: ``<data_root>/<domain>/images/<name>.{png,tif,tiff}`` and
``<data_root>/<domain>/masks/<name>.{png,tif,tiff}``, an image and its mask sharing the
file stem. A mask is binary (any value > 0 is nucleus, e.g. 0/1 or 0/255) or an instance
map (non-negative integers, each nucleus its own id); colour masks are refused.

Optional ``train.txt`` and ``val.txt`` in a domain folder list file names (or stems), one
a line. As in the releases these lists come from, there is no third list and ``val.txt`` is
the held-out set the paper reports on: it becomes the *test* split and the site has no
validation split. Without the lists, cases are split by a seeded draw (``split`` shares).

Images are read to [0, 1] (uint8 by 255, uint16 by 65535; grey is repeated to RGB, an
alpha channel dropped), resized to ``image_size`` (bilinear; masks nearest) and then, by
default, scaled per image from its minimum to its maximum over all channels, as the
released code's ``ScaleIntensityd`` (``intensity="minmax"``; ``"dtype"`` keeps the
division by the pixel type's maximum). Every file is decoded once, when the domains are
loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .base import SiteData
from .problems import DataError, Problem, Report, site_report
from .readers import PICTURE_SUFFIXES, as_label_map, read_picture
from .samples import assemble_sites, quantize, resize
from .site_folders import Case, broken_link, read_site_folders, select_sites
from .sources import NUCLEI_INTENSITIES, data_source
from .splits import assign_split, check_fractions, load_split_file

# The source's declaration (sources.py): its sites, the paper's sample side, its channels.
DOMAINS = data_source("nuclei").sites
IMAGE_SIZE = data_source("nuclei").defaults.image_size
CHANNELS = data_source("nuclei").in_channels
_LISTS = {"train": "train.txt", "test": "val.txt"}
_SCALE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


def _files_by_stem(folder: Path) -> tuple[dict[str, Path], list[Problem]]:
    """Image files in ``folder`` by stem, and a problem for each stem found twice and each
    broken link."""
    files: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in PICTURE_SUFFIXES:
            continue
        if not path.is_file():
            problems += broken_link(path)
            continue
        if path.stem in files:
            problems.append(Problem(path, f"same name as {files[path.stem].name}"))
        else:
            files[path.stem] = path
    return files, problems


def find_items(domain_dir: Path) -> tuple[dict[str, tuple[Path, Path]], list[Problem]]:
    """``{stem: (image, mask)}`` in a domain folder, and the unpaired or duplicated files."""
    if not domain_dir.is_dir():
        return {}, [Problem(domain_dir, "domain folder is missing")]
    missing = [domain_dir / sub for sub in ("images", "masks") if not (domain_dir / sub).is_dir()]
    if missing:
        return {}, [Problem(path, "folder is missing") for path in missing]
    images, problems = _files_by_stem(domain_dir / "images")
    masks, mask_problems = _files_by_stem(domain_dir / "masks")
    problems += mask_problems
    problems += [
        Problem(path, "image has no mask (expected masks/<same name>.png or .tif)")
        for stem, path in images.items()
        if stem not in masks
    ]
    problems += [
        Problem(path, "mask has no image (expected images/<same name>.png or .tif)")
        for stem, path in masks.items()
        if stem not in images
    ]
    if not images and not masks:
        problems.append(Problem(domain_dir, "no images found in images/"))
    return {stem: (path, masks[stem]) for stem, path in images.items() if stem in masks}, problems


def read_lists(domain_dir: Path, stems: Sequence[str]) -> tuple[dict | None, list[Problem]]:
    """The domain's ``train.txt`` / ``val.txt`` as ``{"train": [...], "val": [], "test": [...]}``.

    None when neither file exists. Problems: only one of them, a list naming no image, an
    entry naming no image or named twice, or an image in both. Images listed in neither
    are left out.
    """
    paths = {name: domain_dir / file for name, file in _LISTS.items()}
    present = [path for path in paths.values() if path.is_file()]
    if not present:
        return None, []
    if len(present) == 1:
        return None, [Problem(present[0], "found without its partner (train.txt and val.txt)")]
    lists: dict[str, list[str]] = {"val": []}
    problems = []
    for name, path in paths.items():
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return None, [Problem(path, f"cannot read list ({type(exc).__name__}: {exc})")]
        entries = [Path(line.strip()).name for line in lines]
        entries = [
            Path(e).stem if Path(e).suffix.lower() in PICTURE_SUFFIXES else e for e in entries
        ]
        lists[name] = [e for e in entries if e]
        if not lists[name]:
            problems.append(Problem(path, "lists no image"))
        problems += [
            Problem(path, f"lists {e}, which is not an image with a mask")
            for e in lists[name]
            if e not in stems
        ]
        repeated = sorted({e for e in lists[name] if lists[name].count(e) > 1})
        problems += [Problem(path, f"lists {e} more than once") for e in repeated]
    both = sorted(set(lists["train"]) & set(lists["test"]))
    problems += [Problem(paths["test"], f"{stem} is also in train.txt") for stem in both]
    return lists, problems


def _as_rgb(array: np.ndarray, path: Path) -> tuple[torch.Tensor | None, list[Problem]]:
    """``[1, 3, H, W]`` float in [0, 1] from a grey, RGB or RGBA uint8/uint16 array."""
    if array.dtype not in _SCALE:
        return None, [Problem(path, f"unsupported pixel type {array.dtype} (need uint8/uint16)")]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        return None, [Problem(path, f"expected a grey, RGB or RGBA image, got shape {array.shape}")]
    image = torch.from_numpy(array[..., :3].astype(np.float32) / _SCALE[array.dtype])
    return image.permute(2, 0, 1)[None], []


def scale_intensity(image: torch.Tensor, intensity: str) -> torch.Tensor:
    """A ``[..., C, H, W]`` image in [0, 1] rescaled as ``intensity`` says.

    ``"minmax"``: its minimum over all channels to 0 and its maximum to 1 (MONAI's
    ``ScaleIntensity``, as released; a constant image becomes 0). ``"dtype"``: unchanged.
    """
    if intensity == "dtype":
        return image
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else torch.zeros_like(image)


def _read_item(job: tuple[Path, Path, int | None, str]) -> Case:
    """Read and check one image and mask; with an image size, also build the sample."""
    image_path, mask_path, image_size, intensity = job
    arrays = {}
    problems = []
    for path, rgb in ((image_path, True), (mask_path, False)):
        arrays[rgb], read_problems = read_picture(path, rgb)
        problems += read_problems
    if problems:
        return Case(problems)
    image, problems = _as_rgb(arrays[True], image_path)
    labels, mask_problems = as_label_map(arrays[False], mask_path)
    problems += mask_problems
    if problems:
        return Case(problems)
    if labels.shape != image.shape[-2:]:
        message = f"mask size {labels.shape} does not match image size {tuple(image.shape[-2:])}"
        return Case([Problem(mask_path, f"{message} ({image_path.name})")])
    foreground = labels > 0
    if image_size is None:
        return Case(foreground=foreground)
    image, mask = resize(image, torch.from_numpy(foreground[None].astype(np.uint8)), image_size)
    image = scale_intensity(image, intensity)
    return Case(foreground=foreground, images=quantize(image), masks=mask)


def _read_domains(
    data_root: Path,
    domains: Sequence[str],
    image_size: int | None,
    workers: int,
    intensity: str = "minmax",
) -> tuple[dict[str, dict[str, Case]], dict[str, dict | None], list[Problem]]:
    """Every item of every domain read, each domain's lists, and the problems found."""
    read, problems = read_site_folders(
        data_root, domains, find_items, _read_item, (image_size, intensity), workers
    )
    lists = {}
    for domain, items in read.items():
        lists[domain], list_problems = read_lists(data_root / domain, list(items))
        problems += list_problems
    return read, lists, problems


def check_nuclei(
    data_root: str | Path, sites: Sequence[str] | None = None, workers: int = 0
) -> Report:
    """Check a nuclei folder: per-domain images and foreground, and every problem.

    Args:
        data_root: folder holding one folder per domain.
        sites: domain names to check (default: all four); an unknown name raises ValueError.
        workers: processes decoding images in parallel (default 0: in this process).
    """
    data_root = Path(data_root)
    read, _, problems = _read_domains(data_root, select_sites(sites, DOMAINS), None, workers)
    return site_report("nuclei", data_root, read, problems, unit="images")


def load_nuclei(
    data_root: str | Path,
    sites: Sequence[str] | None = None,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.0, 0.2),
    augment: bool = True,
    split_file: str | Path | Mapping | None = None,
    workers: int = 0,
    intensity: str = "minmax",
) -> list[SiteData]:
    """Load nuclei domains as ``SiteData``; the split comes from a split file, the domain's
    ``train.txt`` / ``val.txt`` (val → test), or a seeded draw, in that order.

    Args:
        data_root: folder holding one folder per domain.
        sites: domain names to load (default: all four); an unknown name raises ValueError.
        image_size: side of the square samples (256 in the paper).
        seed: seeds the drawn split (per domain).
        split: train / val / test shares for domains without lists (default 80/0/20,
            train and test only, like the lists).
        augment: random 90° rotations and flips on the train split (as for prostate).
        split_file: a split written by ``write_split`` (path or dict) to reuse.
        workers: processes decoding images in parallel (default 0: in this process).
        intensity: ``"minmax"`` (default, as released: each image from its minimum to its
            maximum) or ``"dtype"`` (÷ 255 for uint8, ÷ 65535 for uint16); see
            :func:`scale_intensity`.

    Images are float32 ``[3, image_size, image_size]`` in [0, 1], masks int64 {0, 1}.

    Raises:
        ValueError: for an unknown ``intensity``.
        DataError: listing every problem in the data, the lists or ``split_file``.
    """
    if intensity not in NUCLEI_INTENSITIES:
        valid = ", ".join(NUCLEI_INTENSITIES)
        raise ValueError(f"nuclei intensity must be one of {valid}; got {intensity!r}")
    check_fractions(split)
    names = select_sites(sites, DOMAINS)
    given = load_split_file(split_file)
    read, lists, problems = _read_domains(Path(data_root), names, image_size, workers, intensity)
    splits = {}
    for domain, items in read.items():
        if given is None and lists[domain] is not None:
            splits[domain] = lists[domain]
            continue
        where = Path(data_root) / domain
        splits[domain], split_problems = assign_split(
            domain, list(items), split, seed, given, where
        )
        problems += split_problems
    if problems:
        raise DataError(problems)
    return assemble_sites(read, splits, channels=CHANNELS, size=image_size, augment=augment)
