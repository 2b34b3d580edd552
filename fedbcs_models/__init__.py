"""fedbcs_models: segmentation networks for FedBCS.

- :class:`UNet`: the paper's UNet (f, 2f, 4f, 8f; bottleneck 16f), optional FSR.
- :func:`insert_fsr`: :class:`fedbcs_ops.FSR` after chosen encoder stages of the UNet or
  of a segmentation_models_pytorch model.
- :class:`FeatureTaps`: forward hooks collecting encoder and decoder levels, the
  bottleneck and FSR's inputs and outputs (:class:`TappedForward`); :data:`DECODER_TAPS`
  says where, per decoder type (:class:`DecoderTaps`); :func:`tappable_module` finds the
  network to tap inside a wrapper.
- :class:`CDPAHead`, :class:`StreamEmbedding`: CDPA fusion (paper 3.3) and the per-pixel
  multi-level embedding kept as per-level parts (``cosine``, ``sq_norm``,
  ``sq_distance``, ``prototype_sums``; ``materialize`` only as a test oracle).
- :class:`CDPAModel`, :func:`build_fedbcs_unet`: backbone + taps + head in one module.

Example:
    >>> import torch
    >>> model = build_fedbcs_unet(in_channels=1, classes=2, init_features=8, proto_dim=16)
    >>> x, labels = torch.randn(2, 1, 64, 64), torch.randint(0, 2, (2, 64, 64))
    >>> logits, embeddings = model.forward_with_embeddings(x)
    >>> sums = model.stream_prototype_sums(embeddings, labels, num_classes=2)
    >>> sums["decoder"][0].shape
    torch.Size([2, 48])

Importing the package imports no torch: :data:`FUSIONS` comes with it, every other name on
first use, so that ``fedbcs --help`` lists the fusions without importing torch (issue 18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._fusions import FUSIONS

if TYPE_CHECKING:
    from ._cdpa import CDPAHead, StreamEmbedding
    from ._fsr_insertion import fsr_stage_numbers, insert_fsr
    from ._model import CDPAModel, build_fedbcs_unet
    from ._taps import DECODER_TAPS, DecoderTaps, FeatureTaps, TappedForward, tappable_module
    from ._unet import UNet

# The names imported on first use, each with its module.
_LAZY = {
    "DECODER_TAPS": "._taps",
    "CDPAHead": "._cdpa",
    "CDPAModel": "._model",
    "DecoderTaps": "._taps",
    "FeatureTaps": "._taps",
    "StreamEmbedding": "._cdpa",
    "TappedForward": "._taps",
    "UNet": "._unet",
    "build_fedbcs_unet": "._model",
    "fsr_stage_numbers": "._fsr_insertion",
    "insert_fsr": "._fsr_insertion",
    "tappable_module": "._taps",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


__all__ = [
    "DECODER_TAPS",
    "FUSIONS",
    "CDPAHead",
    "CDPAModel",
    "DecoderTaps",
    "FeatureTaps",
    "StreamEmbedding",
    "TappedForward",
    "UNet",
    "build_fedbcs_unet",
    "fsr_stage_numbers",
    "insert_fsr",
    "tappable_module",
]
