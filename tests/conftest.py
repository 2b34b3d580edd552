"""Test-wide setup.

Without a GPU the Triton kernels run under the Triton interpreter, on CPU tensors. The
variable must be set before Triton compiles anything, i.e. before the first kernel call.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests use small tensors, for which a second intra-op thread costs more than it
# gives on a 2-core machine (and processes started by tests inherit the setting).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def eval_batch_sizes(monkeypatch) -> list[int]:
    """The batch size of every ``fedbcs_fl.client.evaluate_split`` call, in call order."""
    from fedbcs_fl import client

    seen: list[int] = []
    original = client.evaluate_split

    def recording(model, dataset, batch_size, device):
        seen.append(batch_size)
        return original(model, dataset, batch_size, device)

    monkeypatch.setattr(client, "evaluate_split", recording)
    return seen
