"""Test-wide setup.

Without a GPU the Triton kernels run under the Triton interpreter, on CPU tensors. The
variable must be set before Triton compiles anything, i.e. before the first kernel call.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests use small tensors, for which a second intra-op thread costs more than it
# gives on a 2-core machine (and processes started by tests inherit the setting).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
