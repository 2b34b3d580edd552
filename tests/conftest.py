"""Test-wide setup.

Without a GPU the Triton kernels run under the Triton interpreter, on CPU tensors. The
variable must be set before Triton compiles anything, i.e. before the first kernel call.

An end-to-end test (it trains a Simulation round, or starts the ``fedbcs`` command or
Flower in a process of its own) carries ``@pytest.mark.e2e``, which ``make test-fast``
leaves out. A test without the mark that does either fails, asking for it.
"""

import os
import subprocess

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests use small tensors, for which a second intra-op thread costs more than it
# gives on a 2-core machine (and processes started by tests inherit the setting).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def three_class_source(monkeypatch):
    """A data source registered for one test: ``three-class-gray``, two sites of
    one-channel images whose masks hold three classes (every shipped source has three
    channels and two classes, so a model built with either hard-coded shows)."""
    from torch.utils.data import TensorDataset

    from fedbcs_fl.data import DATA_SOURCES, DataSource, SiteData

    sites = ("north", "south")

    def load(config, workers):
        generator = torch.Generator().manual_seed(config.seed)
        size = config.image_size

        def split(n: int) -> TensorDataset:
            images = torch.rand(n, 1, size, size, generator=generator)
            return TensorDataset(images, torch.randint(0, 3, (n, size, size), generator=generator))

        names = config.sites or sites
        return [SiteData(name, split(config.n_train), split(config.n_test)) for name in names]

    source = DataSource("three-class-gray", sites, num_classes=3, in_channels=1, load=load)
    monkeypatch.setitem(DATA_SOURCES, source.name, source)
    return source


class DataRead(Exception):
    """A command read its data: it got past every check before that (``args[0]``: the
    configuration it read them with)."""


@pytest.fixture
def data_read(monkeypatch) -> type[DataRead]:
    """Reading data (``fedbcs_fl.data.load_sites``) raises the returned exception type, so
    a test of a command's checks fails, or stops, where the command would read its data."""

    def refuse(config, workers=0):
        raise DataRead(config)

    monkeypatch.setattr("fedbcs_fl.data.load_sites", refuse)
    return DataRead


@pytest.fixture
def eval_batch_sizes(monkeypatch) -> list[int]:
    """The batch size of every ``fedbcs_fl.client.evaluate_split`` call, in call order."""
    from fedbcs_fl import client

    seen: list[int] = []
    original = client.evaluate_split

    def recording(model, dataset, batch_size, device, num_classes, *distances):
        seen.append(batch_size)
        return original(model, dataset, batch_size, device, num_classes, *distances)

    monkeypatch.setattr(client, "evaluate_split", recording)
    return seen


# What an end-to-end test starts in a process of its own: ``python -m fedbcs_fl.cli ...``
# or Flower's programs.
E2E_PROGRAMS = ("fedbcs_fl", "flwr", "flower-superlink", "flower-supernode")


@pytest.fixture(autouse=True)
def end_to_end_runs_carry_the_mark(request, monkeypatch):
    if request.node.get_closest_marker("e2e") is not None:
        return
    from fedbcs_fl.simulation import Simulation  # after TRITON_INTERPRET is set

    def refuse(what: str):
        pytest.fail(f"{request.node.nodeid} {what}: mark it @pytest.mark.e2e", pytrace=False)

    def run_round(simulation, round_index):
        refuse("trains a Simulation round")

    class Popen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            words = [args] if isinstance(args, str | os.PathLike) else args
            if any(program in str(word) for word in words for program in E2E_PROGRAMS):
                refuse(f"starts {' '.join(map(str, words))}")
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(Simulation, "run_round", run_round)
    monkeypatch.setattr(subprocess, "Popen", Popen)
