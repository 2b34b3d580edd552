"""A test that runs a federation end to end without ``@pytest.mark.e2e`` fails
(tests/conftest.py), so ``make test-fast`` never runs one by mistake."""

import subprocess
import sys

import pytest

from fedbcs_fl.simulation import Simulation

from ._tiny import tiny_config, tiny_sites


def test_an_unmarked_test_cannot_train_a_round():
    simulation = Simulation(tiny_config(), tiny_sites(1), progress=False)
    with pytest.raises(pytest.fail.Exception, match="trains a Simulation round: mark it"):
        simulation.run_round(1)


def test_an_unmarked_test_cannot_start_fedbcs():
    # --help: were the check gone, this test would fail at once, not start a run.
    with pytest.raises(pytest.fail.Exception, match=r"starts .* -m fedbcs_fl\.cli --help: mark"):
        subprocess.run([sys.executable, "-m", "fedbcs_fl.cli", "--help"], capture_output=True)


def test_an_unmarked_test_may_start_other_programs():
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
