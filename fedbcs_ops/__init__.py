"""fedbcs_ops: the low-level ops of FedBCS.

- :class:`FSR` / :func:`fsr`: frequency-domain style recalibration in two memory passes;
  :data:`GATES`, the names of FSR's gates.
- :func:`spectral_mean_amplitude`: GAP of the amplitude spectrum (paper eq. 6).
- :func:`class_sums` / :func:`class_prototypes`: masked per-class feature reduction.
- :mod:`fedbcs_ops.reference`: the literal implementations, as test oracles.
- :func:`check_tensor`: the argument check of the ops, for the layers built on them.

On CUDA tensors the work runs in Triton kernels; elsewhere in plain PyTorch.
``FEDBCS_OPS_BACKEND=torch|triton`` forces a backend.
"""

from . import reference
from ._class_sums import class_prototypes, class_sums, prototypes_from_sums
from ._fsr import fsr, spectral_mean_amplitude
from ._modules import FSR, GATES
from ._validate import check_tensor

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
