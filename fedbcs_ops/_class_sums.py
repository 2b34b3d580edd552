"""Masked per-class feature sums: the reduction behind every prototype (paper eq. 2, 8, 9).

For features ``[B, C, h, w]`` and labels ``[B, H, W]`` with ``H = s_h·h``, ``W = s_w·w``,

    sums[k, c] = Σ_{b, i, j} hist[b, k, i, j] · features[b, c, i, j]
    counts[k]  = Σ_{b, i, j} hist[b, k, i, j]

where ``hist[b, k, i, j]`` counts the pixels of class k in the ``s_h × s_w`` label block
over feature pixel (i, j). That equals nearest-upsampling the features to the label
resolution and summing per class, without building the upsampled tensor. Labels coarser
than the features pick feature pixels as ``F.interpolate(mode="nearest")`` does.

Layout of this file: the PyTorch path (block histogram + one batched matmul that reads the
features once), the Triton kernel, its launcher, and the public functions.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._backend import use_triton
from ._validate import check_same_device, check_tensor

# --------------------------------------------------------------------------------------
# Plain PyTorch
# --------------------------------------------------------------------------------------


def _block_histogram(labels, num_classes, ignore_index, h, w):
    """``[B, K, h·w]`` float32: pixels of each class in each feature pixel's label block."""
    B, H, W = labels.shape
    sh, sw = H // h, W // w
    cell = torch.arange(h * w, device=labels.device).view(h, 1, w, 1)
    batch = torch.arange(B, device=labels.device).view(B, 1, 1, 1, 1)
    blocks = labels.reshape(B, h, sh, w, sw)
    index = (batch * num_classes + blocks) * (h * w) + cell
    if ignore_index is not None:
        index = index[blocks != ignore_index]
    hist = torch.bincount(index.reshape(-1), minlength=B * num_classes * h * w)
    return hist.view(B, num_classes, h * w).to(torch.float32)


def _class_sums_torch(features, labels, num_classes, ignore_index):
    B, C, h, w = features.shape
    hist = _block_histogram(labels, num_classes, ignore_index, h, w)
    pixels = features.reshape(B, C, h * w).to(torch.float32)
    # One batched GEMM with K output columns: a single read of the features, no permute.
    sums = torch.bmm(pixels, hist.transpose(1, 2)).sum(0).T
    return sums.contiguous(), hist.sum((0, 2))


# --------------------------------------------------------------------------------------
# Triton kernel (imported lazily)
# --------------------------------------------------------------------------------------


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _class_sums_kernel(
        feat_ptr,  # [B, C, h·w] features, row-major, any float dtype
        label_ptr,  # [B, H, W] integer labels, row-major
        sums_ptr,  # [B, SPLITS, C, BLOCK_K] float32 out: partial sums
        counts_ptr,  # [B, SPLITS, BLOCK_K] float32 out: partial counts
        C,  # channels
        HW,  # feature pixels per image (h·w)
        w,  # feature width
        H_L,  # label height (s_h·h)
        W_L,  # label width (s_w·w)
        S_H,  # label rows per feature row
        S_W,  # label columns per feature column
        K,  # classes
        ignore_index,  # label to skip when HAS_IGNORE
        PIX_PER_SPLIT,  # feature pixels per split, a multiple of BLOCK_P
        SPLITS,  # pixel splits per image
        HAS_IGNORE: tl.constexpr,  # whether ignore_index is set
        BLOCK_C: tl.constexpr,  # channels per program
        BLOCK_P: tl.constexpr,  # feature pixels per step
        BLOCK_K: tl.constexpr,  # classes, padded to a power of two
    ):
        """sums[k, c] += Σ_p hist[k, p] · f[c, p] over one channel block and pixel range.

        hist[k, p] counts class k in the S_H × S_W label block of feature pixel p: the
        nearest-upsampled class sums of eq. 9, reading the NCHW features once.
        """
        b = tl.program_id(0).to(tl.int64)
        c_blk = tl.program_id(1)
        split = tl.program_id(2)
        chans = c_blk * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = chans < C
        classes = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_C, BLOCK_K], dtype=tl.float32)
        count = tl.zeros([BLOCK_K], dtype=tl.float32)
        feat_base = feat_ptr + b * C * HW
        label_base = label_ptr + b * H_L * W_L
        for step in range(0, PIX_PER_SPLIT, BLOCK_P):
            pix = split * PIX_PER_SPLIT + step + tl.arange(0, BLOCK_P)
            pmask = pix < HW
            row = pix // w
            col = pix % w
            hist = tl.zeros([BLOCK_K, BLOCK_P], dtype=tl.float32)
            for di in range(S_H):
                for dj in range(S_W):
                    offs = (row * S_H + di) * W_L + col * S_W + dj
                    lab = tl.load(label_base + offs, mask=pmask, other=-1)
                    valid = pmask & (lab >= 0) & (lab < K)
                    if HAS_IGNORE:
                        valid = valid & (lab != ignore_index)
                    hit = (lab[None, :] == classes[:, None]) & valid[None, :]
                    hist += hit.to(tl.float32)
            f = tl.load(
                feat_base + chans[:, None] * HW + pix[None, :],
                mask=cmask[:, None] & pmask[None, :],
                other=0.0,
            ).to(tl.float32)
            acc += tl.sum(f[:, None, :] * hist[None, :, :], axis=2)
            count += tl.sum(hist, axis=1)
        part = b * SPLITS + split
        tl.store(
            sums_ptr + (part * C + chans[:, None]) * BLOCK_K + classes[None, :],
            acc,
            mask=cmask[:, None],
        )
        if c_blk == 0:
            tl.store(counts_ptr + part * BLOCK_K + classes, count)

    return triton, _class_sums_kernel


_BLOCK_P = 128
_TILE = 8192  # BLOCK_C · BLOCK_K · BLOCK_P elements in registers per program
_TARGET_PROGRAMS = 1024


def _class_sums_triton(features, labels, num_classes, ignore_index):
    triton, kernel = _kernels()
    B, C, h, w = features.shape
    H, W = labels.shape[1:]
    block_k = triton.next_power_of_2(num_classes)
    block_c = max(1, min(triton.next_power_of_2(C), _TILE // (block_k * _BLOCK_P)))
    c_blocks = triton.cdiv(C, block_c)
    pix_blocks = triton.cdiv(h * w, _BLOCK_P)
    splits = max(1, min(pix_blocks, triton.cdiv(_TARGET_PROGRAMS, B * c_blocks)))
    pix_per_split = triton.cdiv(pix_blocks, splits) * _BLOCK_P
    splits = triton.cdiv(h * w, pix_per_split)
    part_sums = torch.empty(B, splits, C, block_k, device=features.device, dtype=torch.float32)
    part_counts = torch.empty(B, splits, block_k, device=features.device, dtype=torch.float32)
    kernel[(B, c_blocks, splits)](
        features,
        labels,
        part_sums,
        part_counts,
        C,
        h * w,
        w,
        H,
        W,
        H // h,
        W // w,
        num_classes,
        -1 if ignore_index is None else ignore_index,
        pix_per_split,
        splits,
        HAS_IGNORE=ignore_index is not None,
        BLOCK_C=block_c,
        BLOCK_P=_BLOCK_P,
        BLOCK_K=block_k,
    )
    sums = part_sums.sum((0, 1))[:, :num_classes].T.contiguous()
    counts = part_counts.sum((0, 1))[:num_classes]
    return sums, counts


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def _check_labels(labels, num_classes, ignore_index):
    low, high = labels.aminmax()
    if low >= 0 and high < num_classes:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        value = int(labels[bad][0])
        allowed = f"[0, {num_classes})" + (
            "" if ignore_index is None else f" or ignore_index={ignore_index}"
        )
        raise ValueError(f"labels hold {value}, outside {allowed}")


def _match_resolution(features, labels):
    """Nearest-downsample features along axes where the labels are coarser; check the rest."""
    h, w = features.shape[2:]
    H, W = labels.shape[1:]
    if h > H or w > W:
        features = F.interpolate(features, size=(min(H, h), min(W, w)), mode="nearest")
        h, w = features.shape[2:]
    if H % h or W % w:
        raise ValueError(
            f"labels of size {H}x{W} must be an integer multiple of the features' {h}x{w} "
            "(or coarser)"
        )
    return features


def class_sums(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of features over the pixels of each class, and the pixel counts.

    Args:
        features: ``[B, C, h, w]`` floating point, NCHW (other layouts are handled).
        labels: ``[B, H, W]`` integer class ids, ``H = s·h`` and ``W = s·w`` for integers
            s ≥ 1 (each feature pixel weighted by its s×s block's class histogram), or
            coarser than the features (nearest-downsampled features).
        num_classes: K.
        ignore_index: a label value to skip (default None).

    Returns:
        ``(sums [K, C] float32, counts [K] float32)``.

    Example:
        >>> f = torch.arange(4.0).view(1, 1, 2, 2)
        >>> sums, counts = class_sums(f, torch.tensor([[[0, 1], [1, 1]]]), 2)
        >>> sums.squeeze(1).tolist(), counts.tolist()
        ([0.0, 6.0], [1.0, 3.0])
    """
    check_tensor("features", features, ndim=4, kind="float")
    check_tensor("labels", labels, ndim=3, kind="int")
    check_same_device(features=features, labels=labels)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels batch {labels.shape[0]} differs from features batch {features.shape[0]}"
        )
    _check_labels(labels, num_classes, ignore_index)
    features = _match_resolution(features, labels)
    if use_triton("class_sums", features):
        return _class_sums_triton(
            features.contiguous(), labels.contiguous(), num_classes, ignore_index
        )
    return _class_sums_torch(features, labels, num_classes, ignore_index)


def class_prototypes(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean features ``[K, C]`` float32 and ``present [K]`` bool.

    Absent classes get a zero row and ``present[k] = False``, never NaN. Arguments as
    :func:`class_sums`. To average over many batches exactly, accumulate ``class_sums``
    and divide once (:func:`prototypes_from_sums`).
    """
    return prototypes_from_sums(*class_sums(features, labels, num_classes, ignore_index))


def prototypes_from_sums(
    sums: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums / counts, counts > 0)`` with zero rows for absent classes."""
    present = counts > 0
    protos = sums / counts.clamp_min(1.0)[:, None]
    return protos, present
