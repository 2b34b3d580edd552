"""CDPA (paper section 3.3): the fusion heads and the per-stream embeddings.

Per stream (encoder, decoder) with tapped levels e_0 (finest) .. e_{L-1} (deepest), each
shallow level l < L-1 is fused with a partner level p(l) — the deepest, p(l) = L-1
(``"deepest"``, the released code) or the next deeper, p(l) = l+1 (``"adjacent"``,
eq. 10) — by a 1×1 conv of the concatenation:

    fused_l = W_l [e_l ; up(e_p)] + b_l = A_l e_l + up(B_l e_p) + b_l

(nearest upsampling commutes with a 1×1 conv). The stream embedding is the concatenation
of the fused levels, each nearest-resampled to the target resolution: (L-1)·proto_dim
channels per pixel, 768 at full resolution in the paper's setting. It is never built in
training: with q = [q_0; ..; q_{L-2}] a prototype split per level,

    e·q   = Σ_l R( (q_l A_l) e_l + q_l·b_l + up((q_l B_l) e_p) )
    ‖e‖²  = Σ_l R( e_l·(G_AA e_l + 2 up(G_AB e_p) + 2 A_lᵀb_l)
                 + up(e_p·(G_BB e_p + 2 B_lᵀb_l)) + ‖b_l‖² )

with R the nearest resampling to the target and G_AA = A_lᵀA_l, G_AB = A_lᵀB_l,
G_BB = B_lᵀB_l: every term is a few channels at its level's own resolution. Cosine
similarities and squared distances follow. Class sums are linear in the features, so
they come from :func:`fedbcs_ops.class_sums` of each level, mapped by A_l and B_l.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedbcs_ops import check_tensor, class_sums

from ._fusions import FUSIONS

STREAMS = ("encoder", "decoder")


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """``x [..., h, w]`` nearest-resampled to ``size``, as ``F.interpolate(mode="nearest")``.

    Shrinking by whole factors is a strided view (nearest takes source pixel ``i·f``),
    which copies nothing: ``interpolate`` copied a full-resolution level per call.
    """
    h, w = x.shape[-2:]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return x
    if h % out_h == 0 and w % out_w == 0:
        return x[..., :: h // out_h, :: w // out_w]
    return F.interpolate(x, size=(out_h, out_w), mode="nearest")


def _conv1x1(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight [M, C]`` applied at every pixel of ``x [B, C, H, W]``: ``[B, M, H, W]``.

    A batched matmul, not ``F.conv2d``: with the few output channels used here (a handful
    of prototypes), oneDNN's 1×1 convolution is several times slower, backward above all.
    ``bmm`` on a view of ``x``, not ``matmul``: broadcasting ``weight`` over the batch,
    ``matmul`` folds ``x`` into a transposed copy and keeps it for the backward, one per
    call (45 of FedBCS's 346 MiB of saved activations in ``bench_fl``).
    """
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x.flatten(2)).unflatten(2, x.shape[-2:])


class StreamEmbedding:
    """The per-pixel embedding of one stream, kept as its per-level parts.

    Built by :class:`CDPAHead`. All results are at ``target_size`` and differentiable
    with respect to the features, the fusion convs and the prototypes.

    Attributes:
        levels: the tapped feature maps, finest first.
        partners: for each fused level, the index of the level it is fused with.
        fusions: the 1×1 fusion convs, one per fused level.
        target_size: ``(Ht, Wt)``.
        dim: D = len(partners) · proto_dim, the embedding channels.
    """

    def __init__(
        self,
        levels: list[torch.Tensor],
        partners: list[int],
        fusions: list[nn.Conv2d] | nn.ModuleList,
        target_size: tuple[int, int],
    ) -> None:
        self.levels = levels
        self.partners = partners
        self.fusions = fusions
        self.target_size = tuple(target_size)
        self.proto_dim = fusions[0].out_channels
        self.dim = len(partners) * self.proto_dim

    def _parts(self):
        """Per fused level: (e_l, e_p, A_l, B_l, b_l), e_l no finer than the target.

        Every term is per pixel, so nearest-downsampling e_l to a coarser target first
        gives the same result without computing pixels that would be dropped.
        """
        for level, (partner, fusion) in enumerate(zip(self.partners, self.fusions, strict=True)):
            e, e_partner = self.levels[level], self.levels[partner]
            if e.shape[-2] >= self.target_size[0] and e.shape[-1] >= self.target_size[1]:
                e = _resize(e, self.target_size)
            weight = fusion.weight[:, :, 0, 0]
            yield e, e_partner, weight[:, : e.shape[1]], weight[:, e.shape[1] :], fusion.bias

    def _check_protos(self, protos: torch.Tensor) -> None:
        check_tensor("protos", protos, ndim=2, kind="float")
        if protos.shape[1] != self.dim:
            raise ValueError(
                f"protos must have shape [M, {self.dim}] (the embedding dim), "
                f"got {tuple(protos.shape)}"
            )

    def _pixel_index(self, pixels: torch.Tensor):
        """(batch, row, col) of the True entries of a ``[B, Ht, Wt]`` bool mask."""
        check_tensor("pixels", pixels, ndim=3)
        if pixels.dtype != torch.bool or tuple(pixels.shape[1:]) != self.target_size:
            raise ValueError(
                f"pixels must be a bool mask of shape [B, {self.target_size[0]}, "
                f"{self.target_size[1]}], got {pixels.dtype} {tuple(pixels.shape)}"
            )
        return pixels.nonzero(as_tuple=True)

    def _at(self, x: torch.Tensor, index) -> torch.Tensor:
        """``x [B, C, h, w]`` (or ``[B, h, w]``) at the target pixels ``index``, nearest:
        ``[A, C]`` (or ``[A]``). Equal to resampling x to the target, then selecting.

        A map at the target's own resolution is gathered from its channel-first layout:
        no pixel is read twice, and the gradient lands in x's own layout (a pixel-major
        copy of a full-resolution level, and its gradient's copy back, cost more than the
        alignment's arithmetic). A coarser map is gathered with an ``index_select`` on its
        pixel-major view: its backward is an ``index_add``, far faster on CPU than the
        accumulating ``index_put`` of advanced indexing when many target pixels share one
        coarse pixel.
        """
        batch, row, col = index
        h, w = x.shape[-2:]
        if (h, w) == self.target_size:
            flat = row * w + col
            if x.ndim == 3:
                return x.flatten(1)[batch, flat]
            return x.flatten(2)[batch, :, flat]
        rows = row * h // self.target_size[0]
        cols = col * w // self.target_size[1]
        flat = (batch * h + rows) * w + cols
        if x.ndim == 3:
            return x.reshape(-1).index_select(0, flat)
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).index_select(0, flat)

    def _level_at(self, level: int, e: torch.Tensor, weight: torch.Tensor, index, memo: dict):
        """``weight [M, C]`` applied to level ``e`` at the target pixels: ``[A, M]``.

        Applied at e's own resolution and then gathered when e has fewer pixels than
        there are target pixels; gathered first otherwise (:meth:`_gathered_level`).
        Same result, less work.
        """
        if e.shape[0] * e.shape[-2] * e.shape[-1] < index[0].numel():
            return self._at(_conv1x1(e, weight), index)
        return self._gathered_level(level, e, index, memo) @ weight.T

    def _gathered_level(self, level: int, e: torch.Tensor, index, memo: dict) -> torch.Tensor:
        """Level ``e`` (as :meth:`_parts` gives it) at the target pixels, ``[A, C]``, made
        once per ``memo``: one gather, and one scatter in the backward, for both the
        ``dot`` and the ``sq_norm`` of :meth:`sq_norm_and_dot`."""
        if level not in memo:
            memo[level] = self._at(e, index)
        return memo[level]

    def dot(self, protos: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Dot products with prototypes ``[M, D]``: ``[B, M, Ht, Wt]``, or ``[A, M]`` at the
        ``A`` True pixels of the bool mask ``pixels [B, Ht, Wt]`` (row-major order)."""
        self._check_protos(protos)
        if pixels is not None:
            return self._dot_at(protos, self._pixel_index(pixels), {})
        total = 0
        chunks = protos.split(self.proto_dim, dim=1)
        for (e, e_partner, a, b, bias), q in zip(self._parts(), chunks, strict=True):
            part = _conv1x1(e, q @ a) + (q @ bias)[None, :, None, None]
            part = part + _resize(_conv1x1(e_partner, q @ b), e.shape[-2:])
            total = total + _resize(part, self.target_size)
        return total

    def _dot_at(self, protos: torch.Tensor, index, memo: dict) -> torch.Tensor:
        """:meth:`dot` at the target pixels ``index`` only: ``[A, M]``."""
        total = 0
        chunks = protos.split(self.proto_dim, dim=1)
        parts = enumerate(self._parts())
        for (level, (e, e_partner, a, b, bias)), q in zip(parts, chunks, strict=True):
            total = total + self._level_at(level, e, q @ a, index, memo) + q @ bias
            total = total + self._at(_conv1x1(e_partner, q @ b), index)
        return total

    def sq_norm(self, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Squared norm ``‖e‖²``: ``[B, Ht, Wt]``, or ``[A]`` at the True pixels of
        ``pixels`` (see :meth:`dot`)."""
        if pixels is not None:
            return self._sq_norm_at(self._pixel_index(pixels), {})
        total = 0
        for e, e_partner, a, b, bias in self._parts():
            linear = _conv1x1(e, a.T @ a) + 2 * (a.T @ bias)[None, :, None, None]
            linear = linear + 2 * _resize(_conv1x1(e_partner, a.T @ b), e.shape[-2:])
            deep = _conv1x1(e_partner, b.T @ b) + 2 * (b.T @ bias)[None, :, None, None]
            deep = (e_partner * deep).sum(1, keepdim=True)
            part = (e * linear).sum(1, keepdim=True) + _resize(deep, e.shape[-2:])
            total = total + _resize(part + bias @ bias, self.target_size)
        return total[:, 0].clamp_min(0)

    def sq_norm_and_dot(
        self, protos: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sq_norm(pixels=pixels), dot(protos, pixels=pixels))`` in one pass: the mask's
        index and the levels' gathers at the pixels are made once for both, which saves a
        full-resolution gather and its backward scatter per level (the alignment loss
        needs both at the same pixels)."""
        self._check_protos(protos)
        index, memo = self._pixel_index(pixels), {}
        return self._sq_norm_at(index, memo), self._dot_at(protos, index, memo)

    def _sq_norm_at(self, index, memo: dict) -> torch.Tensor:
        """The terms of :meth:`sq_norm` at target pixels only: the partner's own terms at
        its (coarse) resolution, once per partner for all the levels fused with it (their
        quadratic forms summed first: ``Σ_l B_lᵀB_l``); the level's terms at its resolution
        when it has fewer pixels than there are target pixels, at the gathered pixels
        otherwise."""
        count = index[0].numel()
        total = 0
        partner_forms: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for level, (e, e_partner, a, b, bias) in enumerate(self._parts()):
            gram, linear_b = b.T @ b, 2 * (b.T @ bias)
            partner = self.partners[level]
            if partner in partner_forms:
                gram = gram + partner_forms[partner][0]
                linear_b = linear_b + partner_forms[partner][1]
            partner_forms[partner] = (gram, linear_b)
            total = total + bias @ bias
            cross = _conv1x1(e_partner, 2 * (a.T @ b))
            if e.shape[0] * e.shape[-2] * e.shape[-1] < count:
                linear = _conv1x1(e, a.T @ a) + (2 * (a.T @ bias))[None, :, None, None]
                linear = linear + _resize(cross, e.shape[-2:])
                total = total + self._at((e * linear).sum(1), index)
            else:
                e_at = self._gathered_level(level, e, index, memo)
                linear = e_at @ (a.T @ a) + 2 * (a.T @ bias) + self._at(cross, index)
                total = total + (e_at * linear).sum(1)
        for partner, (gram, linear_b) in partner_forms.items():
            e_partner = self.levels[partner]
            deep = _conv1x1(e_partner, gram) + linear_b[None, :, None, None]
            total = total + self._at((e_partner * deep).sum(1), index)
        return total.clamp_min(0)

    def _sq_norm_and_dots(self, protos, sq_norm, dots, pixels):
        """The given ``sq_norm`` and ``dots``, each computed where missing (both in one
        pass at ``pixels`` when both are)."""
        self._check_protos(protos)
        if sq_norm is None and dots is None and pixels is not None:
            return self.sq_norm_and_dot(protos, pixels)
        if sq_norm is None:
            sq_norm = self.sq_norm(pixels)
        if dots is None:
            dots = self.dot(protos, pixels)
        return sq_norm, dots

    def cosine(
        self,
        protos: torch.Tensor,
        sq_norm: torch.Tensor | None = None,
        eps: float = 1e-8,
        dots: torch.Tensor | None = None,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cosine similarity to prototypes ``[M, D]``: ``[B, M, Ht, Wt]``, or ``[A, M]`` at
        the True pixels of ``pixels`` (see :meth:`dot`).

        Args:
            protos: ``[M, D]`` prototypes.
            sq_norm: :meth:`sq_norm` (same ``pixels``), if already computed.
            eps: lower bound of each norm (default 1e-8, as ``F.normalize``'s 1e-12
                would be too small for float32 squared norms).
            dots: :meth:`dot` of ``protos`` (same ``pixels``), if already computed, e.g.
                in one call with other prototypes.
            pixels: optional ``[B, Ht, Wt]`` bool mask of the pixels wanted.
        """
        sq_norm, dots = self._sq_norm_and_dots(protos, sq_norm, dots, pixels)
        norms = sq_norm.sqrt().clamp_min(eps).unsqueeze(1)
        proto_norms = protos.norm(dim=1).clamp_min(eps)
        if pixels is None:
            proto_norms = proto_norms[:, None, None]
        return dots / (norms * proto_norms)

    def sq_distance(
        self,
        protos: torch.Tensor,
        sq_norm: torch.Tensor | None = None,
        dots: torch.Tensor | None = None,
        pixels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Squared distance ``‖e − q‖²`` to prototypes ``[M, D]``: ``[B, M, Ht, Wt]``, or
        ``[A, M]`` at the True pixels of ``pixels``; arguments as :meth:`cosine`."""
        sq_norm, dots = self._sq_norm_and_dots(protos, sq_norm, dots, pixels)
        proto_sq_norms = protos.square().sum(1)
        if pixels is None:
            proto_sq_norms = proto_sq_norms[:, None, None]
        return (sq_norm.unsqueeze(1) - 2 * dots + proto_sq_norms).clamp_min(0)

    def labels_at_target(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels ``[B, H, W]`` nearest-resampled to ``target_size``, as the released code."""
        check_tensor("labels", labels, ndim=3, kind="int")
        if labels.shape[0] != self.levels[0].shape[0]:
            raise ValueError(
                f"labels batch {labels.shape[0]} differs from the features' batch "
                f"{self.levels[0].shape[0]}"
            )
        if tuple(labels.shape[-2:]) == self.target_size:
            return labels
        resized = F.interpolate(labels[:, None].float(), size=self.target_size, mode="nearest")
        return resized[:, 0].to(labels.dtype)

    def prototype_sums(
        self, labels: torch.Tensor, num_classes: int, ignore_index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums of the embedding over the pixels of each class, and the counts.

        Equal to :func:`fedbcs_ops.class_sums` of :meth:`materialize` with
        :meth:`labels_at_target` labels, computed per level.

        Args:
            labels: ``[B, H, W]`` integer class ids at any resolution.
            num_classes: K.
            ignore_index: a label value to skip (default None).

        Returns:
            ``(sums [K, D] float32, counts [K] float32)``; divide with
            :func:`fedbcs_ops.prototypes_from_sums`.
        """
        labels = self.labels_at_target(labels)
        level_sums = {}
        for index in {*range(len(self.partners)), *self.partners}:
            level_sums[index], counts = class_sums(
                self.levels[index], labels, num_classes, ignore_index
            )
        sums = []
        for level, (partner, (_, _, a, b, bias)) in enumerate(
            zip(self.partners, self._parts(), strict=True)
        ):
            part = level_sums[level] @ a.T.float() + level_sums[partner] @ b.T.float()
            sums.append(part + counts[:, None] * bias.float())
        return torch.cat(sums, dim=1), counts

    def materialize(self) -> torch.Tensor:
        """The concatenated embedding ``[B, D, Ht, Wt]``, literally: the test oracle."""
        fused = []
        for level, (partner, fusion) in enumerate(zip(self.partners, self.fusions, strict=True)):
            e = self.levels[level]
            concat = torch.cat([e, _resize(self.levels[partner], e.shape[-2:])], dim=1)
            fused.append(_resize(fusion(concat), self.target_size))
        return torch.cat(fused, dim=1)


class CDPAHead(nn.Module):
    """The CDPA fusion convs of both streams.

    Args:
        encoder_channels: channels of the tapped encoder levels, finest first (≥ 2).
        decoder_channels: the same for the decoder.
        proto_dim: output channels of each fusion conv (default 256, the paper's).
        fusion: partner of each shallow level, ``"deepest"`` (default, released) or
            ``"adjacent"`` (paper eq. 10).
        encoder_target: stride (relative to the model input) of the encoder embedding;
            None (default) is the finest tapped encoder level, as released.
        decoder_target: the same for the decoder (default 4, as released; None is the
            finest tapped decoder level).

    ``forward(encoder_levels, decoder_levels, input_size)`` returns
    ``{"encoder": StreamEmbedding, "decoder": StreamEmbedding}``.
    """

    def __init__(
        self,
        encoder_channels: list[int] | tuple[int, ...],
        decoder_channels: list[int] | tuple[int, ...],
        proto_dim: int = 256,
        fusion: str = "deepest",
        encoder_target: int | None = None,
        decoder_target: int | None = 4,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
        if not isinstance(proto_dim, int) or proto_dim < 1:
            raise ValueError(f"proto_dim must be a positive int, got {proto_dim!r}")
        channels = {"encoder": list(encoder_channels), "decoder": list(decoder_channels)}
        targets = {"encoder": encoder_target, "decoder": decoder_target}
        for stream in STREAMS:
            if len(channels[stream]) < 2:
                raise ValueError(
                    f"{stream}_channels must list at least 2 levels, got {channels[stream]}"
                )
            target = targets[stream]
            if target is not None and (not isinstance(target, int) or target < 1):
                raise ValueError(f"{stream}_target must be None or a positive int, got {target!r}")
        self.fusion = fusion
        self.proto_dim = proto_dim
        self.channels = channels
        self.targets = targets
        self.partners = {stream: FUSIONS[fusion](len(channels[stream])) for stream in STREAMS}
        self.fusions = nn.ModuleDict(
            {
                stream: nn.ModuleList(
                    nn.Conv2d(channels[stream][level] + channels[stream][partner], proto_dim, 1)
                    for level, partner in enumerate(self.partners[stream])
                )
                for stream in STREAMS
            }
        )

    def embedding_dim(self, stream: str) -> int:
        """D of a stream's embedding: (levels − 1) · proto_dim."""
        return len(self.partners[stream]) * self.proto_dim

    def forward(
        self,
        encoder_levels: list[torch.Tensor],
        decoder_levels: list[torch.Tensor],
        input_size: tuple[int, int],
    ) -> dict[str, StreamEmbedding]:
        levels = {"encoder": list(encoder_levels), "decoder": list(decoder_levels)}
        embeddings = {}
        for stream in STREAMS:
            found = [level.shape[1] for level in levels[stream]]
            if found != self.channels[stream]:
                raise ValueError(
                    f"{stream}_levels have channels {found}, the head was built for "
                    f"{self.channels[stream]}"
                )
            target = self.targets[stream]
            if target is None:
                size = levels[stream][0].shape[-2:]
            else:
                size = (input_size[0] // target, input_size[1] // target)
            embeddings[stream] = StreamEmbedding(
                levels[stream], self.partners[stream], self.fusions[stream], size
            )
        return embeddings
