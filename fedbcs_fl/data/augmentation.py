"""The training augmentation of the real data sets, as the authors' code applies it."""

from __future__ import annotations

import torch


def rot90_flip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' training augmentation, applied to ``[C, H, W]`` image and ``[H, W]`` mask.

    As in their ``RandomRotate90`` and ``RandomFlip``: rotate by ``k`` quarter turns with
    ``k`` uniform in 0..4 (Python's inclusive ``randint``, so no turn has weight 2/5), then
    with probability 0.75 flip rows, columns or both, each with weight 1/3.

    Draws from torch's global RNG: ``torch.manual_seed`` makes it repeatable.
    """
    k = int(torch.randint(0, 5, ()))
    image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
    if torch.rand(()) < 0.75:
        dims = [(-2,), (-1,), (-2, -1)][int(torch.randint(0, 3, ()))]
        image, mask = torch.flip(image, dims), torch.flip(mask, dims)
    return image.contiguous(), mask.contiguous()
