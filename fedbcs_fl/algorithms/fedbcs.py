"""FedBCS: FSR in the encoder and context-aware dual-level prototype alignment (CDPA).

Client loss (paper eq. 15–17, released weighting of the segmentation loss):

    L = (CE + soft Dice) / 2 + ½ Σ_{stream ∈ {encoder, decoder}} (L_contra + λ·L_consis)

- L_contra, eq. 15: for every foreground pixel of the stream's embedding (labels
  nearest-resampled to its resolution), multi-positive InfoNCE of its cosine
  similarities / τ against all global cluster prototypes, positives those of its class;
  by default with the released code's caps (``contrast="released"``,
  :func:`~fedbcs_fl.losses.capped_multi_positive_infonce`), or in log space
  (``contrast="exact"``).
- L_consis, eq. 16: squared distance to the mean prototype of its class, divided by the
  embedding dimension D (eq. 16 sums over dimensions; dividing keeps the term's scale
  independent of ``proto_dim``), averaged over those pixels.
- Both are computed per level of the embedding (``StreamEmbedding``), never on the
  materialised 768-channel map. In round 1 there are no global prototypes: L_MP = 0.

Payload up: per stream, the exact class means of the embedding over the last local
epoch, for the classes present (up to K per stream: 4 prototypes on a binary set).
Server: size-weighted FedAvg of the weights; per stream and class, FINCH (cosine, last
partition) over the client prototypes, the cluster means, and their mean (eq. 13–14).
"""

from __future__ import annotations

import torch

from ..aggregation import cluster_class_prototypes
from ..losses import capped_multi_positive_infonce, multi_positive_infonce
from ..payload import PrototypeSet
from ._protos import accumulate_class_sums, class_mean_payload
from .base import Algorithm, ClientUpdate, LocalContext
from .methods import METHODS

STREAMS = ("encoder", "decoder")
STREAM_PROTOTYPES = tuple(PrototypeSet(f"protos/{s}", f"labels/{s}") for s in STREAMS)
# Fused levels of a stream's embedding, each ``proto_dim`` wide: every tapped level of the
# UNet (four per stream) but the deepest, fused with a deeper one (either ``fusion``).
FUSED_LEVELS = 3


class FedBCS(Algorithm):
    name = "fedbcs"
    options = METHODS[name].options

    def build_model(self):
        from fedbcs_models import build_fedbcs_unet

        return build_fedbcs_unet(
            self.in_channels,
            self.num_classes,
            init_features=self.config.init_features,
            fsr=bool(self.opt["fsr"]),
            cdpa=bool(self.opt["cdpa"]),
            proto_dim=int(self.opt["proto_dim"]),
            fsr_gate=self.opt["fsr_gate"],
            fusion=self.opt["fusion"],
        )

    # ---- payload -------------------------------------------------------------------

    @property
    def uploads(self):
        """Per stream, the class means of its embedding; nothing without CDPA (ablation)."""
        return STREAM_PROTOTYPES if self.opt["cdpa"] else ()

    def prototype_dim(self, prototypes):
        return FUSED_LEVELS * int(self.opt["proto_dim"])

    # ---- client side ----------------------------------------------------------------

    def training_loss(self, model, images, masks, ctx: LocalContext):
        if not self.opt["cdpa"]:
            return self.segmentation_loss(model(images), masks)
        logits, embeddings = model.forward_with_embeddings(images)
        loss = self.segmentation_loss(logits, masks)
        if ctx.recording:
            with torch.no_grad():
                self.record_embeddings(embeddings, masks, ctx)
        if f"protos/{STREAMS[0]}" not in ctx.global_payload:
            return loss
        alignment = 0.0
        for stream, emb in embeddings.items():
            contra, consis = self.alignment_terms(emb, masks, ctx.global_payload, stream)
            ctx.log(f"contra/{stream}", contra)
            ctx.log(f"consis/{stream}", consis)
            alignment = alignment + contra + self.opt["lambda_consis"] * consis
        return loss + alignment / len(embeddings)

    def record_embeddings(self, embeddings, masks, ctx: LocalContext) -> None:
        """Add each stream's class sums of a batch under ``sums/{stream}``."""
        for stream, emb in embeddings.items():
            accumulate_class_sums(ctx, f"/{stream}", emb.prototype_sums, masks, self.num_classes)

    def record_batch(self, model, images, masks, ctx: LocalContext):
        if self.opt["cdpa"]:
            self.record_embeddings(model.forward_with_embeddings(images)[1], masks, ctx)

    def alignment_terms(self, emb, masks, payload, stream):
        """(L_contra, L_consis) of one stream over its foreground pixels."""
        protos = payload[f"protos/{stream}"].to(masks.device)
        proto_labels = payload[f"labels/{stream}"].to(masks.device)
        mean = payload[f"mean/{stream}"].to(masks.device)
        labels = emb.labels_at_target(masks)
        anchors = labels > 0
        zero = protos.new_zeros(())
        if not anchors.any() or protos.shape[0] == 0:
            return zero, zero
        # Only the anchor pixels, and one pass over the levels for both prototype sets.
        # [A] and [A, M + K]
        sq_norm, dots = emb.sq_norm_and_dot(torch.cat([protos, mean]), pixels=anchors)
        proto_dots, mean_dots = dots.split([protos.shape[0], mean.shape[0]], dim=1)
        cosine = emb.cosine(protos, sq_norm, dots=proto_dots, pixels=anchors)  # [A, M]
        anchor_labels = labels[anchors]
        positives = proto_labels[None, :] == anchor_labels[:, None]
        # ``contrast``: the released code's capped InfoNCE, or the exact one (docs/fidelity.md).
        released = self.opt["contrast"] == "released"
        infonce = capped_multi_positive_infonce if released else multi_positive_infonce
        contra, _ = infonce(cosine / self.opt["tau"], positives)
        sq_dist = emb.sq_distance(mean, sq_norm, dots=mean_dots, pixels=anchors)  # [A, K]
        has_mean = payload[f"mean_present/{stream}"].to(masks.device)[anchor_labels]
        consis = sq_dist.gather(1, anchor_labels[:, None])[:, 0][has_mean] / emb.dim
        contra = contra.mean() if contra.numel() else zero
        consis = consis.mean() if consis.numel() else zero
        return contra, consis

    def end_local(self, model, ctx: LocalContext):
        payload = {}
        for stream in STREAMS:
            payload |= class_mean_payload(ctx, f"/{stream}")
        return payload

    # ---- server side ----------------------------------------------------------------

    def aggregate_payload(self, updates: list[ClientUpdate], global_payload):
        if not self.opt["cdpa"]:
            return {}
        out = {}
        for stream in STREAMS:
            protos, present = [], []
            for update in updates:
                rows = update.payload.get(f"protos/{stream}")
                if rows is None:
                    continue
                dense = torch.zeros(self.num_classes, rows.shape[1])
                mask = torch.zeros(self.num_classes, dtype=torch.bool)
                dense[update.payload[f"labels/{stream}"]] = rows
                mask[update.payload[f"labels/{stream}"]] = True
                protos.append(dense)
                present.append(mask)
            if not protos:
                continue
            clustered = cluster_class_prototypes(protos, present)
            for key, value in clustered.items():
                out[f"{key}/{stream}"] = value
        return out
