"""The contract every data source meets: a list of sites, each with its splits.

A split is a ``torch.utils.data.Dataset`` whose items are ``(image, mask)``:
``image`` float32 ``[C, H, W]`` scaled to [0, 1], ``mask`` int64 ``[H, W]`` with class ids
0 (background) to K−1 (K = the run's ``num_classes``: 2 for the binary sets, 3 for
synthetic-prostate-zones, ``dataset.json``'s labels for ``folder``). All sites of one
source have the same C, H and W.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass
class SiteData:
    """One client's data: its name and its train / test (and optional validation) splits."""

    name: str
    train: Dataset
    test: Dataset
    val: Dataset | None = None
