"""Figures of data sets: a grid of example images per site with their mask overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from .base import SiteData

__all__ = ["save_site_grid"]

_OVERLAY_COLOUR = (0.1, 1.0, 0.3)
_OVERLAY_ALPHA = 0.4


def save_site_grid(
    sites: list[SiteData],
    path: str | Path,
    per_site: int = 4,
    gray_channel: int | None = None,
    title: str | None = None,
) -> Path:
    """Save a PNG with one row per site: example training images and their mask overlays.

    Each example takes two panels, the image and the image with its foreground tinted and
    outlined. Sites with fewer training images than ``per_site`` show what they have.

    Args:
        sites: the sites to show, one row each, labelled with the site name.
        path: output PNG file; missing parent folders are created.
        per_site: examples per site, taken from the start of the training split. Default 4.
        gray_channel: show only this channel in gray (e.g. ``1``, the centre slice of a
            3-slice MRI image); ``None`` (default) shows 3-channel images as RGB and
            1-channel images in gray.
        title: figure title; ``None`` (default) for none.

    Returns:
        The path written.

    Raises:
        ValueError: no sites, or ``per_site`` below 1.
    """
    if not sites:
        raise ValueError("sites must not be empty")
    if per_site < 1:
        raise ValueError(f"per_site must be at least 1, got {per_site}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(
        len(sites),
        2 * per_site,
        figsize=(1.3 * 2 * per_site, 1.35 * len(sites) + (0.4 if title else 0)),
        squeeze=False,
    )
    for row, site in zip(axes, sites, strict=True):
        for column, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
            example = column // 2
            if example >= len(site.train):
                continue
            image, mask = site.train[example]
            picture = _displayable(image.numpy(), gray_channel)
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if column % 2:
                foreground = mask.numpy() > 0
                tint = np.zeros((*foreground.shape, 4))
                tint[foreground] = (*_OVERLAY_COLOUR, _OVERLAY_ALPHA)
                ax.imshow(tint, interpolation="nearest")
                if foreground.any() and not foreground.all():
                    ax.contour(foreground, levels=[0.5], colors=[_OVERLAY_COLOUR], linewidths=0.6)
        row[0].set_ylabel(site.name, rotation=0, ha="right", va="center", fontsize=9)
        row[0].set_frame_on(False)
    for column, ax in enumerate(axes[0]):
        ax.set_title("mask" if column % 2 else "image", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _displayable(image: np.ndarray, gray_channel: int | None) -> np.ndarray:
    """``[C, H, W]`` → ``[H, W]`` (gray) or ``[H, W, 3]`` (RGB) in [0, 1]."""
    if gray_channel is not None:
        return image[gray_channel]
    if image.shape[0] == 3:
        return np.clip(image.transpose(1, 2, 0), 0, 1)
    return image[0]
