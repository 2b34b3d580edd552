"""fedbcs_ops: the low-level ops of FedBCS.

- :class:`FSR` / :func:`fsr`: frequency-domain style recalibration in two memory passes;
  :data:`GATES`, the names of FSR's gates.
- :func:`spectral_mean_amplitude`: GAP of the amplitude spectrum (paper eq. 6).
- :func:`class_sums` / :func:`class_prototypes`: masked per-class feature reduction.
- :mod:`fedbcs_ops.reference`: the literal implementations, as test oracles.
- :func:`check_tensor`: the argument check of the ops, for the layers built on them.

On CUDA tensors the work runs in Triton kernels; elsewhere in plain PyTorch.
``FEDBCS_OPS_BACKEND=torch|triton`` forces a backend.

Importing the package imports no torch: :data:`GATES` comes with it, every other name on
first use, so that ``fedbcs --help`` lists the gates without importing torch (issue 18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._gates import GATES

if TYPE_CHECKING:
    from . import reference
    from ._class_sums import class_prototypes, class_sums, prototypes_from_sums
    from ._fsr import fsr, spectral_mean_amplitude
    from ._modules import FSR
    from ._validate import check_tensor

# The names imported on first use, each with its module.
_LAZY = {
    "FSR": "._modules",
    "check_tensor": "._validate",
    "class_prototypes": "._class_sums",
    "class_sums": "._class_sums",
    "fsr": "._fsr",
    "prototypes_from_sums": "._class_sums",
    "reference": ".reference",
    "spectral_mean_amplitude": "._fsr",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)


__all__ = [
    "FSR",
    "GATES",
    "check_tensor",
    "class_prototypes",
    "class_sums",
    "fsr",
    "prototypes_from_sums",
    "reference",
    "spectral_mean_amplitude",
]
