"""Per-call choice between the Triton kernels and the plain-PyTorch path.

The rule: CUDA tensors and an importable Triton take the kernels; everything else takes
PyTorch. ``FEDBCS_OPS_BACKEND=torch|triton`` forces one side. Forcing ``triton`` on CPU
tensors is allowed only under the Triton interpreter (``TRITON_INTERPRET=1``), which is
how the kernels are tested on machines without a GPU.

Triton is imported lazily, so a CPU-only install never needs it.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "FEDBCS_OPS_BACKEND"

# Dtypes the kernels load and store; they accumulate in float32 whatever the input.
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def requested_backend() -> str:
    name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={name!r} is not a backend; valid: {', '.join(BACKENDS)}")
    return name


def use_triton(op: str, *tensors: torch.Tensor) -> bool:
    """Whether ``op`` runs its Triton kernels on ``tensors``; raises if forced and impossible."""
    name = requested_backend()
    if name == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    dtype_ok = all(t.dtype in TRITON_DTYPES for t in tensors if t.is_floating_point())
    if name == "auto":
        return on_cuda and dtype_ok and triton_importable()
    # Forced: say exactly why it cannot run rather than quietly falling back.
    if not triton_importable():
        raise RuntimeError(f"{ENV_VAR}=triton but Triton is not installed; install `triton`")
    if not on_cuda and not triton_interpreter():
        raise RuntimeError(
            f"{ENV_VAR}=triton: {op} got CPU tensors; Triton runs on CUDA tensors, "
            "or on CPU only under the interpreter (TRITON_INTERPRET=1)"
        )
    if not dtype_ok:
        dtypes = sorted({str(t.dtype) for t in tensors if t.is_floating_point()})
        raise RuntimeError(
            f"{ENV_VAR}=triton: {op} has no kernel for {', '.join(dtypes)}; "
            f"supported: {', '.join(str(d) for d in TRITON_DTYPES)}"
        )
    return True
