"""Test-wide setup.

Without a GPU the Triton kernels run under the Triton interpreter, on CPU tensors. The
variable must be set before Triton compiles anything, i.e. before the first kernel call.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
