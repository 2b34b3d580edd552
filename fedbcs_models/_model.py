"""CDPAModel: a segmentation model with FeatureTaps and a CDPAHead, and the paper builder."""

from __future__ import annotations

import torch
from torch import nn

from fedbcs_ops import check_tensor

from ._cdpa import CDPAHead, StreamEmbedding
from ._taps import FeatureTaps
from ._unet import UNet

RELEASED_FSR_STAGES = (2, 3, 4)


class CDPAModel(nn.Module):
    """A backbone with CDPA taps and fusion heads; ``state_dict`` covers both.

    Args:
        backbone: :class:`~fedbcs_models.UNet` or a supported smp model (see
            :class:`~fedbcs_models.FeatureTaps`), with or without FSR.
        proto_dim: channels per fused level (default 256).
        fusion: ``"deepest"`` (default) or ``"adjacent"``; see :class:`CDPAHead`.
        encoder_target: encoder embedding stride; None (default) is the finest level.
        decoder_target: decoder embedding stride (default 4).

    Use:
        ``model(x)`` returns plain logits (the taps record nothing).
        ``logits, embeddings = model.forward_with_embeddings(x)`` with ``embeddings``
        ``{"encoder": StreamEmbedding, "decoder": StreamEmbedding}``; then
        ``emb.cosine(P)``, ``emb.sq_distance(P)``, ``emb.sq_norm()``,
        ``emb.labels_at_target(labels)`` and
        ``model.stream_prototype_sums(embeddings, labels, num_classes)``.

    Example:
        >>> model = CDPAModel(UNet(init_features=8), proto_dim=16)
        >>> logits, emb = model.forward_with_embeddings(torch.randn(2, 3, 64, 64))
        >>> emb["encoder"].cosine(torch.randn(5, emb["encoder"].dim)).shape
        torch.Size([2, 5, 64, 64])
    """

    def __init__(
        self,
        backbone: nn.Module,
        proto_dim: int = 256,
        fusion: str = "deepest",
        encoder_target: int | None = None,
        decoder_target: int | None = 4,
    ):
        super().__init__()
        self.backbone = backbone
        self.taps = FeatureTaps(backbone)
        self.head = CDPAHead(
            self.taps.encoder_channels,
            self.taps.decoder_channels,
            proto_dim=proto_dim,
            fusion=fusion,
            encoder_target=encoder_target,
            decoder_target=decoder_target,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_with_embeddings(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, StreamEmbedding]]:
        """``(logits, {"encoder": StreamEmbedding, "decoder": StreamEmbedding})``.

        Args:
            x: ``[B, in_channels, H, W]`` floating point.
        """
        check_tensor("x", x, ndim=4, kind="float")
        if x.shape[1] != self.taps.in_channels:
            raise ValueError(
                f"x must have {self.taps.in_channels} channels, got shape {tuple(x.shape)}"
            )
        tapped = self.taps.forward_with_levels(x)
        return tapped.output, self.head(tapped.encoder, tapped.decoder, x.shape[-2:])

    @staticmethod
    def stream_prototype_sums(
        embeddings: dict[str, StreamEmbedding],
        labels: torch.Tensor,
        num_classes: int,
        ignore_index: int | None = None,
    ):
        """``{stream: (sums [K, D], counts [K])}``: :meth:`StreamEmbedding.prototype_sums`
        of each stream of :meth:`forward_with_embeddings`'s output.
        """
        return {
            stream: embedding.prototype_sums(labels, num_classes, ignore_index)
            for stream, embedding in embeddings.items()
        }


def build_fedbcs_unet(
    in_channels: int = 3,
    classes: int = 2,
    init_features: int = 32,
    fsr: bool = True,
    cdpa: bool = True,
    proto_dim: int = 256,
    fsr_gate: str = "static",
    fusion: str = "deepest",
) -> nn.Module:
    """The paper's model: UNet, FSR after encoder stages 2–4, CDPA heads.

    Args:
        in_channels: image channels (default 3).
        classes: logit channels (default 2).
        init_features: UNet width f (default 32).
        fsr: put FSR after encoder stages 2, 3, 4 (default True).
        cdpa: wrap in :class:`CDPAModel` (default True); False returns the bare UNet.
        proto_dim: CDPA channels per fused level (default 256).
        fsr_gate: ``"static"`` (default, released) or ``"adaptive"`` (eq. 6).
        fusion: ``"deepest"`` (default, released) or ``"adjacent"`` (eq. 10).
    """
    unet = UNet(
        in_channels,
        classes,
        init_features,
        fsr_stages=RELEASED_FSR_STAGES if fsr else (),
        fsr_gate=fsr_gate,
    )
    return CDPAModel(unet, proto_dim=proto_dim, fusion=fusion) if cdpa else unet
