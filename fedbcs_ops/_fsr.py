"""FSR: frequency-domain style recalibration (paper eq. 4–7) in two memory passes.

The literal FSR takes X = FFT2(x), blends the amplitudes ``a·|FFT2(IN(x))| + b·|X|``,
keeps the phase of X and transforms back. IN(x) = (x − μ)·r with one μ and one
r = 1/sqrt(var + eps) per (sample, channel), so FFT2(IN(x)) = r·X at every frequency but
DC, where it is 0, and its phase is that of X. Hence, exactly,

    FSR(x) = a·IN(x) + b·x,   and with the per-channel affine   out = α·x + β,
    α = w·(a·r + b),   β = bias − w·a·r·μ        (one α, β per sample and channel).

Forward: one reduction pass (μ, r) and one element-wise pass. Backward, with g = ∂L/∂out,
N = H·W, Sg = Σ g and Sc = Σ g·(x − μ) per row:

    ∂L/∂x      = α·g − (w·a·r/N)·Sg − (w·a·r³/N)·Sc·(x − μ)
    ∂L/∂a      = w·r·Sc                ∂L/∂b    = w·(Sc + μ·Sg)
    ∂L/∂weight = Σ_batch a·r·Sc + b·(Sc + μ·Sg)        ∂L/∂bias = Σ_batch Sg

again one reduction pass (Sg, Sc) and one element-wise pass. Sc is accumulated from
x − μ, never as Σg·x − μ·Sg, so constant channels (var = 0, r = 1/sqrt(eps)) stay exact.

Layout of this file: the shared coefficient math, the Triton kernels, the launchers (each
heavy pass as a Triton kernel or as plain PyTorch, the CPU path), the autograd Function,
and the public ``fsr``. On CPU this explicit backward is 2–3x faster than autograd
through the same forward ops (docs/performance.md).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from ._backend import use_triton
from ._validate import check_same_device, check_tensor

# --------------------------------------------------------------------------------------
# Plain PyTorch
# --------------------------------------------------------------------------------------


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _affine_coefficients(a, b, weight, bias, mean, rstd):
    """α and β of ``out = α·x + β`` per (sample, channel), all [B, C]."""
    ar = a * rstd
    alpha = ar + b
    beta = -ar * mean
    if weight is not None:
        alpha = alpha * weight
        beta = beta * weight
    if bias is not None:
        beta = beta + bias
    return alpha, beta


# --------------------------------------------------------------------------------------
# Triton kernels (imported lazily: only when a call takes the Triton path)
# --------------------------------------------------------------------------------------


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _fsr_stats_kernel(
        x_ptr,  # [rows, N] input, row-major
        mean_ptr,  # [rows, splits] float32 out: mean of each split
        m2_ptr,  # [rows, splits] float32 out: Σ (x − split mean)² of each split
        N,  # elements per row (H·W)
        CHUNK,  # elements per split, a multiple of BLOCK
        SPLITS,  # splits per row
        BLOCK: tl.constexpr,  # elements per step
    ):
        """Per row slice: count-weighted mean and M2, merged block by block (Chan et al.).

        A block's mean is taken first and its deviations squared about it, so the
        variance is exact for large means; partial (mean, M2) per split are merged on
        the host, which is how a few long rows still fill the GPU.
        """
        row = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        base = x_ptr + row * N
        n_acc = 0.0
        mean_acc = 0.0
        m2_acc = 0.0
        for step in range(0, CHUNK, BLOCK):
            idx = split * CHUNK + step + tl.arange(0, BLOCK)
            mask = idx < N
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            n_blk = tl.sum(mask.to(tl.float32), axis=0)
            mean_blk = tl.sum(x, axis=0) / tl.maximum(n_blk, 1.0)
            dev = tl.where(mask, x - mean_blk, 0.0)
            m2_blk = tl.sum(dev * dev, axis=0)
            n_new = n_acc + n_blk
            delta = mean_blk - mean_acc
            frac = n_blk / tl.maximum(n_new, 1.0)
            mean_acc = mean_acc + delta * frac
            m2_acc = m2_acc + m2_blk + delta * delta * n_acc * frac
            n_acc = n_new
        tl.store(mean_ptr + row * SPLITS + split, mean_acc)
        tl.store(m2_ptr + row * SPLITS + split, m2_acc)

    @triton.jit
    def _fsr_apply_kernel(
        x_ptr,  # [rows, N] input
        out_ptr,  # [rows, N] output, dtype of x
        alpha_ptr,  # [rows] float32 scale
        beta_ptr,  # [rows] float32 shift
        N,  # elements per row
        BLOCK: tl.constexpr,  # elements per program
    ):
        """out = α·x + β (the FSR forward, eq. 7 after the identity)."""
        row = tl.program_id(0).to(tl.int64)
        idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < N
        x = tl.load(x_ptr + row * N + idx, mask=mask, other=0.0).to(tl.float32)
        alpha = tl.load(alpha_ptr + row)
        beta = tl.load(beta_ptr + row)
        out = x * alpha + beta
        tl.store(out_ptr + row * N + idx, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _fsr_bwd_reduce_kernel(
        grad_ptr,  # [rows, N] ∂L/∂out
        x_ptr,  # [rows, N] input
        mean_ptr,  # [rows] float32 μ
        sg_ptr,  # [rows, splits] float32 out: Σ g
        sc_ptr,  # [rows, splits] float32 out: Σ g·(x − μ)
        N,  # elements per row
        CHUNK,  # elements per split, a multiple of BLOCK
        SPLITS,  # splits per row
        BLOCK: tl.constexpr,  # elements per step
    ):
        """Sg = Σ g and Sc = Σ g·(x − μ) over one row slice."""
        row = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        mean = tl.load(mean_ptr + row)
        sg = tl.zeros([BLOCK], dtype=tl.float32)
        sc = tl.zeros([BLOCK], dtype=tl.float32)
        for step in range(0, CHUNK, BLOCK):
            idx = split * CHUNK + step + tl.arange(0, BLOCK)
            mask = idx < N
            g = tl.load(grad_ptr + row * N + idx, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + row * N + idx, mask=mask, other=0.0).to(tl.float32)
            sg += g
            sc += g * tl.where(mask, x - mean, 0.0)
        tl.store(sg_ptr + row * SPLITS + split, tl.sum(sg, axis=0))
        tl.store(sc_ptr + row * SPLITS + split, tl.sum(sc, axis=0))

    @triton.jit
    def _fsr_bwd_apply_kernel(
        grad_ptr,  # [rows, N] ∂L/∂out
        x_ptr,  # [rows, N] input
        dx_ptr,  # [rows, N] out: ∂L/∂x, dtype of x
        cg_ptr,  # [rows] float32 coefficient of g
        cx_ptr,  # [rows] float32 coefficient of x
        c0_ptr,  # [rows] float32 constant
        N,  # elements per row
        BLOCK: tl.constexpr,  # elements per program
    ):
        """∂L/∂x = cg·g + cx·x + c0, the backward of FSR rearranged per row."""
        row = tl.program_id(0).to(tl.int64)
        idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = idx < N
        g = tl.load(grad_ptr + row * N + idx, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * N + idx, mask=mask, other=0.0).to(tl.float32)
        dx = g * tl.load(cg_ptr + row) + x * tl.load(cx_ptr + row) + tl.load(c0_ptr + row)
        tl.store(dx_ptr + row * N + idx, dx.to(dx_ptr.dtype.element_ty), mask=mask)

    return SimpleNamespace(
        triton=triton,
        stats=_fsr_stats_kernel,
        apply=_fsr_apply_kernel,
        bwd_reduce=_fsr_bwd_reduce_kernel,
        bwd_apply=_fsr_bwd_apply_kernel,
    )


# --------------------------------------------------------------------------------------
# Launchers: each heavy pass on [B, C, H, W] tensors, Triton or PyTorch
# --------------------------------------------------------------------------------------

_REDUCE_BLOCK = 1024
_APPLY_BLOCK = 1024
_TARGET_PROGRAMS = 1024  # enough splits per row to put several programs on every SM


def _split_rows(rows: int, n: int):
    """Split each row of ``n`` elements so that ``rows · splits`` fills the GPU."""
    blocks = -(-n // _REDUCE_BLOCK)
    splits = max(1, min(blocks, -(-_TARGET_PROGRAMS // rows)))
    chunk = -(-blocks // splits) * _REDUCE_BLOCK
    splits = -(-n // chunk)
    counts = (n - torch.arange(splits) * chunk).clamp(max=chunk)
    return splits, chunk, counts


def _stats(x, kernels):
    """Per (sample, channel) mean and biased variance, [B, C] each."""
    if not kernels:
        # Two passes, mean then ‖x − μ‖²: exact for large means, and several times
        # faster on CPU than torch.var_mean's Welford loop.
        x = x.to(_acc_dtype(x))
        mean = x.mean(dim=(2, 3))
        var = torch.linalg.vector_norm(x - mean[:, :, None, None], dim=(2, 3)).square_()
        return mean, var / (x.shape[2] * x.shape[3])
    k = _kernels()
    B, C, H, W = x.shape
    rows, n = B * C, H * W
    splits, chunk, counts = _split_rows(rows, n)
    part_mean = torch.empty(rows, splits, device=x.device, dtype=torch.float32)
    part_m2 = torch.empty_like(part_mean)
    k.stats[(rows, splits)](x, part_mean, part_m2, n, chunk, splits, BLOCK=_REDUCE_BLOCK)
    counts = counts.to(device=x.device, dtype=torch.float32)
    mean = (part_mean * counts).sum(1) / n
    m2 = part_m2.sum(1) + (counts * (part_mean - mean[:, None]) ** 2).sum(1)
    return mean.view(B, C), (m2 / n).view(B, C)


def _apply(x, alpha, beta, kernels):
    """α·x + β with [B, C] coefficients, in the dtype of x."""
    if not kernels:
        out = x.to(alpha.dtype) * alpha[:, :, None, None]
        return out.add_(beta[:, :, None, None]).to(x.dtype)
    k = _kernels()
    B, C, H, W = x.shape
    out = torch.empty_like(x)
    grid = (B * C, k.triton.cdiv(H * W, _APPLY_BLOCK))
    k.apply[grid](
        x, out, alpha.float().contiguous(), beta.float().contiguous(), H * W, BLOCK=_APPLY_BLOCK
    )
    return out


def _bwd_reduce(grad, x, mean, kernels):
    """Σ g and Σ g·(x − μ) per (sample, channel)."""
    if not kernels:
        acc = mean.dtype
        g = grad.to(acc)
        centred = x.to(acc) - mean[:, :, None, None]
        return g.sum((2, 3)), centred.mul_(g).sum((2, 3))
    k = _kernels()
    B, C, H, W = x.shape
    rows, n = B * C, H * W
    splits, chunk, _ = _split_rows(rows, n)
    part_sg = torch.empty(rows, splits, device=x.device, dtype=torch.float32)
    part_sc = torch.empty_like(part_sg)
    k.bwd_reduce[(rows, splits)](
        grad, x, mean.contiguous(), part_sg, part_sc, n, chunk, splits, BLOCK=_REDUCE_BLOCK
    )
    return part_sg.sum(1).view(B, C), part_sc.sum(1).view(B, C)


def _bwd_apply(grad, x, cg, cx, c0, kernels):
    """cg·g + cx·x + c0 with [B, C] coefficients, in the dtype of x."""
    if not kernels:
        acc = cg.dtype
        dx = x.to(acc) * cx[:, :, None, None]
        dx.add_(c0[:, :, None, None]).addcmul_(grad.to(acc), cg[:, :, None, None])
        return dx.to(x.dtype)
    k = _kernels()
    B, C, H, W = x.shape
    dx = torch.empty_like(x)
    grid = (B * C, k.triton.cdiv(H * W, _APPLY_BLOCK))
    k.bwd_apply[grid](
        grad, x, dx, cg.contiguous(), cx.contiguous(), c0.contiguous(), H * W, BLOCK=_APPLY_BLOCK
    )
    return dx


# --------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------


class _FSRFunction(torch.autograd.Function):
    """FSR with the two-pass forward and two-pass backward of the module docstring."""

    @staticmethod
    def forward(ctx, x, a, b, weight, bias, eps, kernels):
        mean, var = _stats(x, kernels)
        rstd = torch.rsqrt(var + eps)
        acc = mean.dtype
        a_, b_ = a.to(acc), b.to(acc)
        w_ = None if weight is None else weight.to(acc)
        bias_ = None if bias is None else bias.to(acc)
        alpha, beta = _affine_coefficients(a_, b_, w_, bias_, mean, rstd)
        ctx.save_for_backward(x, a, b, weight, mean, rstd)
        ctx.has_bias = bias is not None
        ctx.kernels = kernels
        return _apply(x, alpha, beta, kernels)

    @staticmethod
    def backward(ctx, grad):
        x, a, b, weight, mean, rstd = ctx.saved_tensors
        acc = mean.dtype
        grad = grad.contiguous()
        sg, sc = _bwd_reduce(grad, x, mean, ctx.kernels)
        a_, b_ = a.to(acc), b.to(acc)
        w_ = 1.0 if weight is None else weight.to(acc)
        n = x.shape[2] * x.shape[3]
        ar = a_ * rstd
        sx = sc + mean * sg  # Σ g·x, only where a gradient needs it
        dx = da = db = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            cg = w_ * (ar + b_)
            cx = -w_ * ar * rstd * rstd * sc / n
            c0 = -w_ * ar * sg / n - cx * mean
            dx = _bwd_apply(grad, x, cg, cx, c0, ctx.kernels)
        if ctx.needs_input_grad[1]:
            da = (w_ * rstd * sc).to(a.dtype)
        if ctx.needs_input_grad[2]:
            db = (w_ * sx).to(b.dtype)
        if weight is not None and ctx.needs_input_grad[3]:
            dweight = (ar * sc + b_ * sx).sum(0).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[4]:
            dbias = sg.sum(0).to(x.dtype if weight is None else weight.dtype)
        return dx, da, db, dweight, dbias, None, None


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------


def _as_gate(name: str, value, x: torch.Tensor) -> torch.Tensor:
    """A gate given as a float, a 0-d tensor or a [B, C] tensor, broadcast to [B, C]."""
    B, C = x.shape[:2]
    if not isinstance(value, torch.Tensor):
        if not isinstance(value, int | float):
            raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
        value = torch.tensor(float(value), device=x.device, dtype=_acc_dtype(x))
    check_tensor(name, value, kind="float")
    if value.ndim != 0 and tuple(value.shape) != (B, C):
        raise ValueError(
            f"{name} must be a float, a 0-d tensor or a [B, C] = [{B}, {C}] tensor, "
            f"got shape {tuple(value.shape)}"
        )
    return value.expand(B, C)


def _check_affine(name: str, value, channels: int) -> None:
    if value is None:
        return
    check_tensor(name, value, ndim=1, kind="float")
    if value.shape[0] != channels:
        raise ValueError(
            f"{name} must have shape [{channels}] (channels of x), got {tuple(value.shape)}"
        )


def fsr(
    x: torch.Tensor,
    a: float | torch.Tensor,
    b: float | torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Frequency-domain style recalibration, ``a·IN(x) + b·x`` then ``weight·y + bias``.

    Equal to the literal FFT amplitude blend of paper eq. 4–7 (see this module's
    docstring), at the cost of two memory passes forward and two backward.

    Args:
        x: features ``[B, C, H, W]``, floating point; non-contiguous input is copied.
        a: weight of the instance-normalised part: a float, a 0-d tensor or ``[B, C]``.
        b: weight of the original part, same forms as ``a``.
        weight: optional per-channel scale ``[C]`` (default None: 1).
        bias: optional per-channel shift ``[C]`` (default None: 0).
        eps: added to the variance of instance norm (default 1e-5).

    Returns:
        A tensor shaped and typed like ``x``, differentiable in x, a, b, weight and bias.

    Example:
        >>> x = torch.randn(2, 4, 8, 8)
        >>> fsr(x, 0.5, 0.5).shape
        torch.Size([2, 4, 8, 8])
    """
    check_tensor("x", x, ndim=4, kind="float")
    _check_affine("weight", weight, x.shape[1])
    _check_affine("bias", bias, x.shape[1])
    a = _as_gate("a", a, x)
    b = _as_gate("b", b, x)
    check_same_device(x=x, a=a, b=b, weight=weight, bias=bias)
    kernels = use_triton("fsr", x)
    return _FSRFunction.apply(x.contiguous(), a, b, weight, bias, float(eps), kernels)


def _hermitian_weights(width: int, device, dtype) -> torch.Tensor:
    """How many times each rfft2 column appears in the full spectrum of a real signal."""
    weights = torch.full((width // 2 + 1,), 2.0, device=device, dtype=dtype)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    return weights


def spectral_mean_amplitude(x: torch.Tensor) -> torch.Tensor:
    """GAP(χ) of paper eq. 6: the mean over all H·W frequencies of the amplitude
    ``χ = |Z|`` of eq. 4's spectrum ``Z = FFT2(x) / (H·W)``, ``[B, C]``.

    With eq. 4's 1/(H·W), Parseval gives ``Σ|Z|² = mean(x²)``, so the result is at most
    ``sqrt(mean(x²) / (H·W))``: it never grows with the image size, for the same pixel
    statistics. Computed from ``rfft2`` (cuFFT on GPU): the half spectrum holds every
    column once and its mirror image, so columns are weighted 1 (DC and, for even W,
    Nyquist) or 2. Differentiable.

    Example:
        >>> spectral_mean_amplitude(torch.ones(1, 1, 4, 4))  # Z = 1 at DC only: 1 / 16
        tensor([[0.0625]])
    """
    check_tensor("x", x, ndim=4, kind="float")
    H, W = x.shape[-2:]
    amplitude = torch.fft.rfft2(x.to(_acc_dtype(x))).abs()
    weights = _hermitian_weights(W, x.device, amplitude.dtype)
    return (amplitude.sum(-2) @ weights) / (H * W) ** 2
