"""Writers of tiny real-data folders, in exactly the published layouts.

Prostate: ``<root>/<site>/CaseNN.nii.gz`` + ``CaseNN_segmentation.nii.gz`` (nibabel).
Nuclei: ``<root>/<domain>/images/*`` + ``masks/*`` as PNG (Pillow) or TIFF (tifffile).

The prostate volumes are built so that the expected samples are easy to state: every voxel
of axial slice ``z`` has intensity ``10 * (z + 1)``, so after clipping at the 99th
percentile and scaling from the minimum the slice reads ``z / (depth - 1)``; the mask is a
rectangle on the slices in ``FOREGROUND_SLICES``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

VOLUME_SHAPE = (8, 8, 6)  # nibabel order: x, y, z
FOREGROUND_SLICES = (0, 2, 5)  # both volume ends, to exercise the clamping
MASK_X, MASK_Y = slice(1, 3), slice(2, 6)


def assert_problems(problems, expected: dict[str, str]) -> None:
    """``problems`` are one per file of ``expected``, ``{file name: part of its message}``."""
    found = {problem.path.name: problem.message for problem in problems}
    assert found.keys() == expected.keys(), found
    for name, part in expected.items():
        assert part in found[name], found[name]


def write_nifti(path: Path, array: np.ndarray, spacing: tuple = (1.0, 1.0, 1.0)) -> Path:
    """Write ``array`` as a NIfTI-1 file with a diagonal affine of voxel ``spacing``
    (default: the identity)."""
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)
    return path


def prostate_volumes(shape=VOLUME_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """The image (float32) and mask (uint8) volumes described in the module docstring."""
    image = np.broadcast_to(10.0 * (np.arange(shape[2]) + 1), shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    for z in FOREGROUND_SLICES:
        mask[MASK_X, MASK_Y, z] = 1
    return image, mask


def write_prostate_case(
    site_dir: Path,
    case: str,
    image: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    mask_suffix: str = "_segmentation",
) -> tuple[Path, Path]:
    """Write one case (default volumes unless given); returns (image path, mask path)."""
    site_dir.mkdir(parents=True, exist_ok=True)
    default_image, default_mask = prostate_volumes()
    image_path = write_nifti(site_dir / f"{case}.nii.gz", default_image if image is None else image)
    mask_path = write_nifti(
        site_dir / f"{case}{mask_suffix}.nii.gz", default_mask if mask is None else mask
    )
    return image_path, mask_path


@pytest.fixture
def prostate_root(tmp_path: Path) -> Path:
    """Two good sites: BIDMC with 10 cases, HK with 5 (its masks named ``_Segmentation``)."""
    root = tmp_path / "prostate"
    for index in range(10):
        write_prostate_case(root / "BIDMC", f"Case{index:02d}")
    for index in range(5):
        write_prostate_case(root / "HK", f"Case{index:02d}", mask_suffix="_Segmentation")
    return root


def write_picture(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as PNG (Pillow) or TIFF (tifffile), by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)
    return path


def nuclei_pair(seed: int, size: tuple[int, int] = (12, 10)) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB uint8 image and a uint16 instance map with ids 0..3 (0 background)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    labels = np.zeros(size, np.uint16)
    labels[1:4, 1:4], labels[6:9, 2:5], labels[2:5, 6:9] = 1, 2, 3
    return image, labels


def write_nuclei_item(
    domain_dir: Path, stem: str, seed: int = 0, image_ext: str = ".png", mask_ext: str = ".png"
) -> tuple[Path, Path]:
    """Write one image and mask; PNG masks are binary 0/255, TIFF masks instance maps."""
    image, labels = nuclei_pair(seed)
    mask = labels if mask_ext != ".png" else ((labels > 0) * 255).astype(np.uint8)
    return (
        write_picture(domain_dir / "images" / f"{stem}{image_ext}", image),
        write_picture(domain_dir / "masks" / f"{stem}{mask_ext}", mask),
    )


@pytest.fixture
def nuclei_root(tmp_path: Path) -> Path:
    """TNBC (PNG, 6 images, no lists) and CRC (TIFF, 5 images, train.txt / val.txt)."""
    root = tmp_path / "nuclei"
    for index in range(6):
        write_nuclei_item(root / "TNBC", f"img{index}", seed=index)
    for index in range(5):
        write_nuclei_item(root / "CRC", f"crc{index}", index, ".tif", ".tif")
    (root / "CRC" / "train.txt").write_text("crc0.tif\ncrc1.tif\ncrc2\n")
    (root / "CRC" / "val.txt").write_text("crc3.tif\ncrc4.tif\n\n")
    return root


# ---- folder: nnU-Net's raw layout, one folder per site ---------------------------------

FOLDER_SHAPE_2D = (12, 10)
FOLDER_SHAPE_3D = (6, 8, 10)  # nibabel order; spacing FOLDER_SPACING: sliced along axis 0
FOLDER_SPACING = (3.0, 1.0, 1.0)
ZONE_NAMES = ("background", "peripheral", "transition")


def folder_case(index: int, shape, classes: int, channel: int = 0) -> tuple:
    """An image and a label of one case.

    The image's value at a point is ``10·p + index`` with ``p`` the first coordinate (or,
    for odd channels, its mirror ``shape[0] − 1 − p``): a slice along axis 0 is constant,
    and after scaling reads ``p / (shape[0] − 1)`` (mirrored for odd channels). The label
    holds a block of each class k ≥ 1 in band ``2k − 1, 2k`` of axis 1, at ``p ≥ 1``
    (slice 0 holds background only).
    """
    first = np.arange(shape[0], dtype=np.float32)
    if channel % 2:
        first = first[::-1]
    first = first.reshape(-1, *([1] * (len(shape) - 1)))
    image = np.broadcast_to(10 * first + index, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for k in range(1, classes):
        label[(slice(1, None), slice(2 * k - 1, 2 * k + 1), *[slice(2, 6)] * (len(shape) - 2))] = k
    return image, label


def write_folder_site(
    root: Path,
    site: str,
    cases: int = 5,
    classes: int = 3,
    channels: int = 1,
    volumetric: bool = False,
    held_out: int = 0,
    spacing: tuple = FOLDER_SPACING,
) -> Path:
    """One site folder in nnU-Net's raw layout: ``cases`` labelled training cases
    (``case0`` ...) and ``held_out`` in imagesTs/labelsTs (``test0`` ...), every channel
    a file of :func:`folder_case`; 2-D as 8-bit PNG, 3-D as NIfTI with ``spacing``."""
    site_dir = root / site
    ending = ".nii.gz" if volumetric else ".png"
    shape = FOLDER_SHAPE_3D if volumetric else FOLDER_SHAPE_2D
    names = [("Tr", f"case{i}") for i in range(cases)] + [
        ("Ts", f"test{i}") for i in range(held_out)
    ]
    for index, (part, case) in enumerate(names):
        for c in range(channels):
            image, label = folder_case(index, shape, classes, c)
            _write_folder_file(
                site_dir / f"images{part}" / f"{case}_{c:04d}{ending}", image, spacing
            )
        _write_folder_file(site_dir / f"labels{part}" / f"{case}{ending}", label, spacing)
    label_names = ZONE_NAMES if classes == 3 else [f"class{k}" for k in range(classes)]
    declared = {
        "channel_names": {str(c): f"channel{c}" for c in range(channels)},
        "labels": {name: k for k, name in enumerate(label_names)},
        "numTraining": cases,
        "file_ending": ending,
    }
    (site_dir / "dataset.json").write_text(json.dumps(declared))
    return site_dir


def _write_folder_file(path: Path, array: np.ndarray, spacing: tuple) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".nii.gz"):
        return write_nifti(path, array, spacing)
    return write_picture(path, array.astype(np.uint8))
