"""``--client-timeout``: a client trains its round on a copy, in a daemon thread. A reply in
time is adopted, so a run with a timeout equals one without, bit for bit; a round past the
deadline is abandoned and leaves the client as a dropout leaves it; a client that never
returns does not keep the process alive."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_config, tiny_sites

ROOT = Path(__file__).resolve().parents[2]
# Longer than an honest tiny client's round on a loaded CPU, by far.
TIMEOUT = 20.0
HUNG = 3600.0  # seconds a hung client sleeps: as good as forever


@pytest.fixture(scope="module")
def sites():
    return tiny_sites(2)


def _final_weights(sites, hang: float = 0.0, **fields) -> dict[str, torch.Tensor]:
    simulation = Simulation(tiny_config(**fields), sites, progress=False)
    simulation.faults.hang_seconds = hang
    simulation.run()
    return simulation.global_weights


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.e2e
def test_a_run_with_a_timeout_equals_one_without(sites):
    _assert_equal(_final_weights(sites), _final_weights(sites, client_timeout=TIMEOUT))


@pytest.mark.e2e
def test_an_abandoned_round_leaves_the_client_as_a_dropout_does(sites):
    # The hung client wakes up while the run goes on: its worker must not touch it.
    hung = _final_weights(
        sites, hang=TIMEOUT + 2, client_timeout=TIMEOUT, inject_faults="site-B:timeout@1"
    )
    dropped = _final_weights(sites, client_timeout=TIMEOUT, inject_faults="site-B:dropout@1")
    _assert_equal(hung, dropped)


HUNG_RUN = f"""
from tests._tiny import tiny_config, tiny_sites
from fedbcs_fl.simulation import Simulation

config = tiny_config(rounds=1, client_timeout={TIMEOUT}, inject_faults="site-B:timeout@1")
simulation = Simulation(config, tiny_sites(2), progress=False)
simulation.faults.hang_seconds = {HUNG}
print(simulation.run()[-1]["faults"])
"""


@pytest.mark.e2e
def test_a_client_that_never_returns_does_not_keep_the_process_alive():
    result = subprocess.run(
        [sys.executable, "-c", HUNG_RUN], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert f"site-B timed out after {TIMEOUT:g} s" in result.stdout
