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
"""

from ._cdpa import FUSIONS, CDPAHead, StreamEmbedding
from ._fsr_insertion import fsr_stage_numbers, insert_fsr
from ._model import CDPAModel, build_fedbcs_unet
from ._taps import DECODER_TAPS, DecoderTaps, FeatureTaps, TappedForward, tappable_module
from ._unet import UNet

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
