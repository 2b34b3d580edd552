"""Your own multi-site data: one folder per site in nnU-Net's raw dataset layout.

Layout (``--dataset folder --data-root DIR``): every folder of ``DIR`` is a site, named
after the folder; each holds ::

    dataset.json   {"channel_names": {"0": "T2", ...}, "labels": {"background": 0, ...},
                    "numTraining": N, "file_ending": ".nii.gz"}
    imagesTr/      CASE_0000.nii.gz, CASE_0001.nii.gz, ...  (one file per channel)
    labelsTr/      CASE.nii.gz                               (class ids 0 .. K-1)
    imagesTs/      optional: held-out cases, same naming
    labelsTs/      optional: their labels (without them imagesTs is not used)

``file_ending`` is ``.png``, ``.tif``/``.tiff`` (2-D: one sample per image; an RGB or
RGBA picture holds three channels) or ``.nii.gz``/``.nii`` (3-D: sliced along the axis
of lowest resolution, the largest voxel spacing; every slice whose label holds a class
other than background becomes a sample, and ``slice_neighbours`` slices either side of
it become extra channels, as the prostate loader stacks one). The model's input channels
are the channels of ``channel_names`` (times ``2·slice_neighbours + 1`` for volumes) and
its classes the ``labels``; every site must declare the same.

Per case and channel, intensities are clipped at the 99th percentile and scaled from the
minimum to [0, 1] (:func:`~fedbcs_fl.data.readers.clip_and_scale`); samples are resized
to ``image_size`` squared (bilinear; labels nearest).

Split by case: ``labelsTr`` cases train and ``labelsTs`` cases test where a site has
``labelsTs``; otherwise a seeded split of the training cases (default 80 % train, 20 %
test). ``split_file`` (a run's ``split.json``) reuses a split.

Example::

    sites = load_folder("data/mine", image_size=128)
    report = check_folder("data/mine")  # every problem, each naming its file
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import SiteData
from .problems import DataError, Problem, Report, site_report
from .readers import (
    NIFTI_SUFFIXES,
    PICTURE_SUFFIXES,
    as_label_map,
    clip_and_scale,
    format_values,
    read_picture,
    read_volume,
)
from .samples import assemble_sites, neighbour_slices, quantize, resize
from .site_folders import Case, read_site_folders, select_sites
from .sources import data_source
from .splits import assign_split, check_fractions, load_split_file

IMAGE_SIZE = data_source("folder").defaults.image_size  # declared with the source (sources.py)
DATASET_JSON = "dataset.json"
FILE_ENDINGS = (*PICTURE_SUFFIXES, *NIFTI_SUFFIXES)
MAX_CLASSES = 256  # labels are kept as uint8
SPACING_RTOL = 1e-3  # voxel spacings of one case closer than this are equal
# (images, labels) folders: the training cases, then the optional held-out ones.
TRAIN_FOLDERS = ("imagesTr", "labelsTr")
TEST_FOLDERS = ("imagesTs", "labelsTs")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Layout:
    """What one site's ``dataset.json`` declares.

    Args:
        channels: the channel names, in channel order.
        labels: the class names, by class id (0 is background).
        file_ending: the ending of every image and label file.
        num_training: ``numTraining``, the cases ``labelsTr`` holds.
    """

    channels: tuple[str, ...]
    labels: tuple[str, ...]
    file_ending: str
    num_training: int

    @property
    def volumetric(self) -> bool:
        """True for 3-D volumes (NIfTI), False for 2-D pictures."""
        return self.file_ending in NIFTI_SUFFIXES

    def in_channels(self, slice_neighbours: int) -> int:
        """The model's input channels: each channel with its neighbouring slices."""
        return len(self.channels) * (2 * slice_neighbours + 1 if self.volumetric else 1)

    def agreement(self) -> tuple:
        """What every site of a federation must share."""
        return self.channels, self.labels, self.volumetric


def site_names(data_root: str | Path) -> list[str]:
    """The sites of a data root: its folders, sorted by name (hidden ones left out)."""
    data_root = Path(data_root)
    if not data_root.is_dir():
        return []
    return sorted(p.name for p in data_root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _entries_problem(value, what: str) -> str | None:
    if not isinstance(value, dict) or not value:
        return f"{what} must be a non-empty JSON object"
    return None


def read_layout(site_dir: Path) -> tuple[Layout | None, list[Problem]]:
    """The :class:`Layout` of a site folder's ``dataset.json``, or every problem in it."""
    path = site_dir / DATASET_JSON
    if not site_dir.is_dir():
        return None, [Problem(site_dir, "site folder is missing")]
    if not path.is_file():
        return None, [Problem(path, "missing: every site folder needs nnU-Net's dataset.json")]
    try:
        declared = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [Problem(path, f"cannot read JSON ({type(exc).__name__}: {exc})")]
    if not isinstance(declared, dict):
        return None, [Problem(path, "expected a JSON object")]
    messages = []
    channels = declared.get("channel_names")
    reason = _entries_problem(channels, "channel_names")
    if reason is None and sorted(channels) != [str(i) for i in range(len(channels))]:
        reason = 'channel_names must be keyed "0", "1", ... (one per channel file _0000, ...)'
    if reason:
        messages.append(reason)
    labels = declared.get("labels")
    reason = _entries_problem(labels, "labels")
    if reason is None and not all(type(v) is int for v in labels.values()):
        reason = (
            'labels must map each class name to its id, e.g. {"background": 0, "tumour": 1} '
            "(region-based labels, lists of ids, are not supported)"
        )
    if reason is None and sorted(labels.values()) != list(range(len(labels))):
        reason = f"label ids must be 0 (background), 1, ... without gaps, got {labels}"
    if reason is None and not 2 <= len(labels) <= MAX_CLASSES:
        reason = f"need 2 to {MAX_CLASSES} labels, background included, got {len(labels)}"
    if reason:
        messages.append(reason)
    ending = declared.get("file_ending")
    if ending not in FILE_ENDINGS:
        messages.append(f"file_ending must be one of {', '.join(FILE_ENDINGS)}, got {ending!r}")
    num_training = declared.get("numTraining")
    if type(num_training) is not int or num_training < 1:
        messages.append(f"numTraining must be a positive integer, got {num_training!r}")
    if messages:
        return None, [Problem(path, message) for message in messages]
    by_id = sorted(labels, key=labels.get)
    names = tuple(str(channels[str(i)]) for i in range(len(channels)))
    return Layout(names, tuple(by_id), ending, num_training), []


def read_layouts(data_root: Path, sites: Sequence[str]) -> tuple[dict[str, Layout], list[Problem]]:
    """Every readable site's :class:`Layout`, and the problems: unreadable ``dataset.json``
    files and sites that disagree with the first on channels, labels or dimensionality."""
    layouts, problems = {}, []
    for site in sites:
        layout, site_problems = read_layout(data_root / site)
        problems += site_problems
        if layout is not None:
            layouts[site] = layout
    if layouts:
        first, reference = next(iter(layouts.items()))
        for site, layout in layouts.items():
            if layout.agreement() != reference.agreement():
                problems.append(
                    Problem(
                        data_root / site / DATASET_JSON,
                        f"site {site} disagrees with site {first}: {_describe(layout)} vs "
                        f"{_describe(reference)}",
                    )
                )
    return layouts, problems


def _describe(layout: Layout) -> str:
    kind = "3-D" if layout.volumetric else "2-D"
    return f"channels {list(layout.channels)}, labels {list(layout.labels)}, {kind}"


def _selected(data_root: Path, sites: Sequence[str] | None) -> list[str]:
    """The site folders to read; every folder of ``data_root`` when ``sites`` is None."""
    return select_sites(sites, site_names(data_root))


def model_shape(
    data_root: str | Path, sites: Sequence[str] | None = None, slice_neighbours: int = 0
) -> tuple[int, int]:
    """``(in_channels, num_classes)`` that the sites' ``dataset.json`` files declare.

    Raises:
        DataError: a ``dataset.json`` is missing or malformed, or the sites disagree
            (each named).
        ValueError: ``slice_neighbours`` for 2-D pictures, or negative.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise DataError([Problem(data_root, "data root is not a folder")])
    names = _selected(data_root, sites)
    layouts, problems = read_layouts(data_root, names)
    if not names:
        problems.append(Problem(data_root, "no site folders (one folder per site)"))
    if problems:
        raise DataError(problems)
    layout = next(iter(layouts.values()))
    if slice_neighbours < 0 or (slice_neighbours and not layout.volumetric):
        raise ValueError(
            f"slice_neighbours must be 0 for 2-D {layout.file_ending} images and ≥ 0 for "
            f"volumes, got {slice_neighbours}"
        )
    return layout.in_channels(slice_neighbours), len(layout.labels)


# ---- finding the files of every case -------------------------------------------------


def _files(folder: Path, ending: str) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith(".")
    )


def _find_pair(
    images_dir: Path, labels_dir: Path, layout: Layout
) -> tuple[dict[str, tuple], list[Problem]]:
    """``{case: (channel files, label file)}`` of one images/labels folder pair, and the
    files without their partner, misnamed or missing channel files."""
    ending = layout.file_ending
    problems = [Problem(p, "folder is missing") for p in (images_dir, labels_dir) if not p.is_dir()]
    if problems:
        return {}, problems
    channels: dict[str, dict[int, Path]] = {}
    for path in _files(images_dir, ending):
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            problems.append(
                Problem(path, f"image name must end in _XXXX, its channel (e.g. case_0000{ending})")
            )
            continue
        channels.setdefault(match["case"], {})[int(match["channel"])] = path
    labels = {path.name[: -len(ending)]: path for path in _files(labels_dir, ending)}
    cases = {}
    for case in sorted(set(channels) | set(labels)):
        if case not in channels:
            expected = f"{images_dir.name}/{case}_0000{ending}"
            problems.append(Problem(labels[case], f"label has no image (expected {expected})"))
            continue
        files = channels[case]
        if case not in labels:
            expected = f"{labels_dir.name}/{case}{ending}"
            problems.append(Problem(files[min(files)], f"image has no label (expected {expected})"))
            continue
        # A 2-D RGB picture holds three channels: only volumes need one file per channel.
        wanted = range(len(layout.channels) if layout.volumetric else max(files) + 1)
        missing = [i for i in wanted if i not in files]
        extra = [i for i in files if i >= len(layout.channels)]
        problems += [
            Problem(images_dir / f"{case}_{i:04d}{ending}", _missing_channel(layout))
            for i in missing
        ]
        problems += [Problem(files[i], _extra_channel(layout)) for i in extra]
        if not missing and not extra:
            cases[case] = (tuple(files[i] for i in sorted(files)), labels[case])
    if not channels and not labels:
        problems.append(Problem(images_dir, f"no images ending in {ending}"))
    return cases, problems


def _missing_channel(layout: Layout) -> str:
    return f"channel file is missing (dataset.json lists channels {list(layout.channels)})"


def _extra_channel(layout: Layout) -> str:
    return f"channel beyond the {len(layout.channels)} that dataset.json lists"


def find_cases(site_dir: Path, layout: Layout | None) -> tuple[dict[str, tuple], list[Problem]]:
    """``{case: (channel files, label file, channel names, label names, file ending)}`` of
    a site, and the problems of its folders (see :func:`_find_pair`), of ``numTraining``
    and of a case in both ``labelsTr`` and ``labelsTs``. Nothing without a layout."""
    if layout is None:
        return {}, []  # dataset.json already has its problem
    cases, problems = _find_pair(*(site_dir / name for name in TRAIN_FOLDERS), layout)
    labels_dir = site_dir / TRAIN_FOLDERS[1]
    labelled = len(_files(labels_dir, layout.file_ending)) if labels_dir.is_dir() else None
    if labelled is not None and labelled != layout.num_training:
        message = f"numTraining is {layout.num_training} but labelsTr holds {labelled} labels"
        problems.append(Problem(site_dir / DATASET_JSON, message))
    if (site_dir / TEST_FOLDERS[1]).is_dir():
        held_out, test_problems = _find_pair(*(site_dir / name for name in TEST_FOLDERS), layout)
        problems += test_problems
        for case, files in held_out.items():
            if case in cases:
                problems.append(Problem(files[1], f"case {case} is also in labelsTr"))
            else:
                cases[case] = files
    declared = (layout.channels, layout.labels, layout.file_ending)
    return {case: (*files, *declared) for case, files in cases.items()}, problems


# ---- reading one case ------------------------------------------------------------------


def slicing_axis(spacing: Sequence[float]) -> int:
    """The axis of lowest resolution (largest spacing); the last of equals, so an
    isotropic volume is sliced along its third axis."""
    return len(spacing) - 1 - int(np.argmax(list(spacing)[::-1]))


def _spacing_problems(path: Path, spacing, reference, label: Path) -> list[Problem]:
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return [Problem(path, f"voxel spacing {spacing} is not positive")]
    if reference is not None and not np.allclose(spacing, reference, rtol=SPACING_RTOL):
        return [Problem(path, f"voxel spacing {spacing} differs from {label.name}'s {reference}")]
    return []


def _read_channels(
    files: tuple[Path, ...], label_path: Path, volumetric: bool
) -> tuple[list[np.ndarray], np.ndarray | None, tuple | None, list[Problem]]:
    """The scaled channels and the label array of one case (native orientation), its
    voxel spacing (volumes) and the problems of its files."""
    problems, raw, spacings = [], [], []
    for path in (*files, label_path):
        if volumetric:
            array, spacing, read_problems = read_volume(path)
            spacings.append(spacing)
        else:
            array, read_problems = read_picture(path)
        problems += read_problems
        raw.append(array)
    if problems:
        return [], None, None, problems
    label = raw.pop()
    if volumetric:
        label_spacing = spacings.pop()
        problems += _spacing_problems(label_path, label_spacing, None, label_path)
        for path, spacing in zip(files, spacings, strict=True):
            problems += _spacing_problems(path, spacing, label_spacing, label_path)
    else:
        label, label_problems = as_label_map(label, label_path)
        problems += label_problems
        label_spacing = None
    channels = []
    for path, array in zip(files, raw, strict=True):
        if not volumetric and array.ndim == 3 and array.shape[2] in (3, 4):
            planes = [array[..., i] for i in range(3)]  # RGB; an alpha channel is dropped
        elif array.ndim == (3 if volumetric else 2):
            planes = [array]
        else:
            problems.append(
                Problem(path, f"expected a grey or RGB picture, got shape {array.shape}")
            )
            continue
        for plane in planes:
            if label is not None and plane.shape != label.shape:
                message = (
                    f"shape {plane.shape} does not match label {label_path.name}'s {label.shape}"
                )
                problems.append(Problem(path, message))
                break
            scaled, scale_problems = clip_and_scale(plane, path)
            problems += scale_problems
            channels.append(scaled)
    return channels, label, label_spacing, problems


def _read_case(job: tuple) -> Case:
    """Read and check one case; with an image size, also build its samples at that size.

    ``job``: (channel files, label file, channel names, label names, file ending, slice
    neighbours, image size or None).
    """
    files, label_path, channel_names, label_names, ending, neighbours, image_size = job
    volumetric = ending in NIFTI_SUFFIXES
    channels, label, spacing, problems = _read_channels(files, label_path, volumetric)
    if problems:
        return Case(problems)
    if len(channels) != len(channel_names):
        message = (
            f"the case's files hold {len(channels)} channel(s) but dataset.json lists "
            f"{len(channel_names)} {list(channel_names)}"
        )
        if len(channels) < len(channel_names):
            case = label_path.name[: -len(ending)]
            message += f" (missing {case}_{len(files):04d}{ending}?)"
        return Case([Problem(files[0], message)])
    values = np.unique(label)
    unknown = values[~np.isin(values, np.arange(len(label_names)))]
    if unknown.size:
        allowed = ", ".join(f"{i} {name}" for i, name in enumerate(label_names))
        message = f"label has values {format_values(unknown)} not in dataset.json's labels"
        return Case([Problem(label_path, f"{message} ({allowed})")])
    image = np.stack(channels)
    if volumetric:
        # [C, a, b, c] → [C, slices, rows, columns], as prostate's [z, y, x] for axis 2.
        axis = slicing_axis(spacing)
        order = (axis, *[a for a in (2, 1, 0) if a != axis])
        label = label.transpose(order)
        image = image.transpose(0, *(1 + a for a in order))
    else:
        label, image = label[None], image[:, None]
    foreground = label != 0
    if image_size is None:
        return Case(foreground=foreground)
    if volumetric:  # the slices with a class other than background, with neighbours
        centre = np.flatnonzero(foreground.any(axis=(1, 2)))
        image = np.concatenate([neighbour_slices(c, centre, neighbours) for c in image], axis=1)
        label = label[centre]
    else:
        image = image.transpose(1, 0, 2, 3)
    if image.shape[0] == 0:
        images = torch.empty(0, image.shape[1], image_size, image_size, dtype=torch.uint8)
        return Case(foreground=foreground, images=images, masks=images[:, 0])
    images, masks = resize(
        torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
        torch.from_numpy(label.astype(np.uint8)),
        image_size,
    )
    return Case(foreground=foreground, images=quantize(images), masks=masks)


# ---- the folder as a whole -------------------------------------------------------------


def _read_folder(
    data_root: Path, sites: Sequence[str] | None, neighbours: int, image_size: int | None, workers
) -> tuple[dict[str, Layout], dict[str, dict[str, Case]], list[Problem]]:
    """Every site's layout, every case read (with samples when ``image_size`` is given),
    and every problem: the data root's, the ``dataset.json`` files', then the cases'."""
    if not data_root.is_dir():
        return {}, {}, [Problem(data_root, "data root is not a folder")]
    names = _selected(data_root, sites)
    layouts, problems = read_layouts(data_root, names)
    if not names:
        problems.append(Problem(data_root, "no site folders (one folder per site)"))
    read, walk_problems = read_site_folders(
        data_root,
        names,
        lambda site_dir: find_cases(site_dir, layouts.get(site_dir.name)),
        _read_case,
        (neighbours, image_size),
        workers,
    )
    return layouts, read, problems + walk_problems


def _held_out(site_dir: Path, layout: Layout, cases) -> list[str]:
    """The cases of a site whose label is in ``labelsTs``."""
    labels_dir = site_dir / TEST_FOLDERS[1]
    return sorted(c for c in cases if (labels_dir / f"{c}{layout.file_ending}").is_file())


def check_folder(
    data_root: str | Path, sites: Sequence[str] | None = None, workers: int = 0
) -> Report:
    """Check a folder of sites: per-site cases, slices (or images) and foreground, and
    every problem, each naming its file.

    Args:
        data_root: folder holding one folder per site.
        sites: site folders to check (default: all); an unknown name raises ValueError.
        workers: processes decoding files in parallel (default 0: in this process).
    """
    data_root = Path(data_root)
    layouts, read, problems = _read_folder(data_root, sites, 0, None, workers)
    volumetric = any(layout.volumetric for layout in layouts.values())
    return site_report("folder", data_root, read, problems, "slices" if volumetric else "images")


def load_folder(
    data_root: str | Path,
    sites: Sequence[str] | None = None,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.0, 0.2),
    augment: bool = True,
    split_file: str | Path | Mapping | None = None,
    workers: int = 0,
    slice_neighbours: int = 0,
) -> list[SiteData]:
    """Load a folder of sites as ``SiteData`` with splits by case.

    Args:
        data_root: folder holding one folder per site.
        sites: site folders to load (default: all, sorted by name); an unknown name
            raises ValueError.
        image_size: side of the square samples (default 128).
        seed: seeds the drawn split (per site).
        split: train / val / test shares of each site's cases where it has no
            ``labelsTs`` (default 80 / 0 / 20).
        augment: random 90° rotations and flips on the train split.
        split_file: a split written by ``write_split`` (path or dict) to reuse; it takes
            precedence over ``labelsTs`` and must list exactly the cases on disk.
        workers: processes decoding files in parallel (default 0: in this process).
        slice_neighbours: volumes only: slices either side of each sample stacked as
            extra channels (default 0).

    Images are float32 ``[C, image_size, image_size]`` in [0, 1], with C from
    :func:`model_shape`; masks int64 class ids.

    Raises:
        DataError: listing every problem in the data (or in ``split_file``).
    """
    check_fractions(split)
    data_root = Path(data_root)
    in_channels, _ = model_shape(data_root, sites, slice_neighbours)
    given = load_split_file(split_file)
    layouts, read, problems = _read_folder(data_root, sites, slice_neighbours, image_size, workers)
    splits = {}
    for site, cases in read.items():
        held_out = _held_out(data_root / site, layouts[site], cases)
        if given is None and held_out:
            train = sorted(set(cases) - set(held_out))
            splits[site] = {"train": train, "val": [], "test": held_out}
            continue
        where = data_root / site
        splits[site], split_problems = assign_split(site, list(cases), split, seed, given, where)
        problems += split_problems
    if problems:
        raise DataError(problems)
    return assemble_sites(read, splits, channels=in_channels, size=image_size, augment=augment)
