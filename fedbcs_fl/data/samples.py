"""Preprocessed 2-D samples held in memory, and the sites assembled from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .augmentation import rot90_flip
from .base import SiteData
from .splits import SPLIT_NAMES


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


def neighbour_slices(volume: np.ndarray, centre: np.ndarray, neighbours: int) -> np.ndarray:
    """``[len(centre), 2n + 1, H, W]``: each ``centre`` slice of ``volume`` ``[Z, H, W]``
    between its ``n = neighbours`` neighbours on either side, in order, the end slice
    repeated past either end of the volume (as the authors' prostate preprocessing)."""
    offsets = np.arange(-neighbours, neighbours + 1)
    return volume[np.clip(centre[:, None] + offsets[None, :], 0, volume.shape[0] - 1)]


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8 (nearest of the 256 levels), for storage."""
    return (images * 255).round_().to(torch.uint8)


class SegmentationSamples(Dataset):
    """Preprocessed 2-D samples held in memory, with optional rot90/flip augmentation.

    Images are stored as uint8 (steps of 1/255, as the authors' preprocessing wrote 8-bit
    images) to keep the six prostate sites at 384² within about 1 GB; items come out as
    float32 ``[C, H, W]`` in [0, 1] and int64 ``[H, W]``. ``cases[i]`` names the case that
    sample ``i`` came from and ``cases`` lists each case once.

    Augmentation (:func:`~fedbcs_fl.data.augmentation.rot90_flip`) draws from torch's global
    RNG: ``torch.manual_seed`` makes it repeatable, and DataLoader worker processes each get
    their own seed from it. The dataset is plain tensors and so pickles for worker processes.
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


def assemble_sites(
    read: Mapping[str, Mapping],
    splits: Mapping[str, Mapping[str, Sequence[str]]],
    channels: int,
    size: int,
    augment: bool,
) -> list[SiteData]:
    """``SiteData`` per site from ``{site: {case: item}}`` whose items carry their samples
    (``images`` ``[N, C, S, S]`` and ``masks`` ``[N, S, S]``) and the case split; train
    alone augments.

    A site whose validation split is empty gets ``val=None``.
    """
    sites = []
    for site, cases in read.items():
        datasets = {
            name: stack_samples(
                [(cases[case].images, cases[case].masks, case) for case in splits[site][name]],
                channels,
                size,
                augment and name == "train",
            )
            for name in SPLIT_NAMES
        }
        val = datasets["val"] if len(datasets["val"]) else None
        sites.append(SiteData(site, datasets["train"], datasets["test"], val))
    return sites
