"""The file readers every real-data loader shares: NIfTI volumes, PNG and TIFF pictures,
label maps and intensity scaling.

A reader never raises on a bad file: it returns the array (or None) and the
:class:`~fedbcs_fl.data.problems.Problem` list that says, naming the file, why the file
cannot be used, so that a check lists every problem of a folder at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

from .problems import Problem

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PICTURE_SUFFIXES = (".png", ".tif", ".tiff")
CLIP_PERCENTILE = 99  # intensities above this percentile of a volume are clipped


def format_values(values: Sequence[float], limit: int = 5) -> str:
    """``"3, 7, 255"``: the first ``limit`` values, then ``", ..."`` if there are more."""
    shown = ", ".join(f"{v:g}" for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def read_volume(path: Path) -> tuple[np.ndarray | None, tuple[float, ...] | None, list[Problem]]:
    """The voxels of a NIfTI file as a 3-D array and its voxel spacing, or the problems.

    A 4-D file with one volume (``[x, y, z, 1]``) counts as 3-D.
    """
    if path.stat().st_size == 0:
        return None, None, [Problem(path, "file is empty (0 bytes)")]
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    # Any failure inside nibabel, gzip or numpy means the file is unusable; say so plainly.
    except Exception as exc:
        return None, None, [Problem(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})")]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        return None, None, [Problem(path, f"expected a 3-D volume, got shape {data.shape}")]
    return data, tuple(float(z) for z in image.header.get_zooms()[:3]), []


def read_picture(path: Path, rgb: bool = False) -> tuple[np.ndarray | None, list[Problem]]:
    """The pixels of a PNG (Pillow; converted to RGB if ``rgb``, a palette picture to its
    colours) or TIFF (tifffile) file, or the problem."""
    if path.stat().st_size == 0:
        return None, [Problem(path, "file is empty (0 bytes)")]
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return tifffile.imread(path), []
        with Image.open(path) as image:
            if rgb:
                return np.asarray(image.convert("RGB")), []
            if image.mode in ("P", "PA"):
                # A palette picture gives the colours its indices stand for, never the
                # indices: a mask whose palette maps index 0 to white would read inverted.
                # Grey colours pass as labels; others are refused as a colour mask.
                return np.asarray(image.convert("RGBA")), []
            return np.asarray(image), []
    # Any failure inside Pillow, tifffile or zlib means the file is unusable.
    except Exception as exc:
        return None, [Problem(path, f"cannot read image ({type(exc).__name__}: {exc})")]


def as_label_map(array: np.ndarray, path: Path) -> tuple[np.ndarray | None, list[Problem]]:
    """The 2-D label map of a picture: one channel (or RGB with equal channels) of
    non-negative integers, never colour."""
    if array.ndim == 3 and array.shape[2] in (3, 4):
        if not (array[..., :3] == array[..., :1]).all():
            return None, [Problem(path, "colour mask (RGB channels differ); need grey or ids")]
        array = array[..., 0]
    if array.ndim != 2:
        return None, [Problem(path, f"expected a 2-D mask, got shape {array.shape}")]
    values = np.unique(array).astype(np.float64)
    bad = values[(values < 0) | (values != np.round(values))]
    if bad.size:
        return None, [
            Problem(path, f"mask has values {format_values(bad)}; need non-negative integers")
        ]
    return array, []


def clip_and_scale(image: np.ndarray, path: Path) -> tuple[np.ndarray | None, list[Problem]]:
    """``image`` clipped at its 99th percentile and scaled from its minimum to [0, 1]
    (float32), as the authors' prostate preprocessing; a problem for NaN or infinite
    values, or when the percentile equals the minimum (nothing to scale)."""
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        return None, [Problem(path, "image has NaN or infinite values")]
    low, high = image.min(), np.percentile(image, CLIP_PERCENTILE)
    if high <= low:
        return None, [Problem(path, "99th-percentile intensity equals the minimum; cannot scale")]
    return (np.clip(image, None, high) - low) / (high - low), []
