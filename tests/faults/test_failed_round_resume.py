"""A client that raises midway through a round leaves nothing of that round in its state:
the round's checkpoint loads weights-only, and a run resumed from it ends as the run that
went on, bit for bit. Every method."""

import shutil

import pytest
import torch

from fedbcs_fl.algorithms import METHODS
from fedbcs_fl.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_config, tiny_sites

FAILING, HEALTHY = "site-B", "site-A"  # site-B's two local steps: it fails after the first


class Stopped(Exception):
    """Ends a run right after a round's checkpoint is written, as a kill there would."""


def stop_after(round_index: int):
    def on_round(record: dict) -> None:
        if record["round"] == round_index:
            raise Stopped

    return on_round


def assert_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


@pytest.mark.e2e
@pytest.mark.parametrize("method", list(METHODS))
def test_a_run_resumes_after_a_client_failed_mid_round(tmp_path, method):
    config = tiny_config(method, rounds=3, inject_faults=f"{FAILING}:raise_mid_round@2")
    sites = tiny_sites(2)
    run, resumed_run = tmp_path / "run", tmp_path / "resumed"
    going_on = Simulation(config, sites, out_dir=run, progress=False, on_round=stop_after(2))
    with pytest.raises(Stopped):
        going_on.run()
    failed_round = going_on.history[-1]
    assert "injected failure" in failed_round["faults"][FAILING]
    assert failed_round["aggregated"] == [HEALTHY]
    shutil.copytree(run, resumed_run)

    clients = load_checkpoint(resumed_run / CHECKPOINT_NAME)["clients"]  # weights_only
    assert clients[FAILING]["state"].keys() == clients[HEALTHY]["state"].keys()

    going_on.run()  # round 3 in the same process, as if nothing had stopped the run
    resumed = Simulation(config, sites, out_dir=resumed_run, progress=False)
    resumed.resume()
    assert [record["round"] for record in resumed.run()] == [1, 2, 3]
    assert resumed.history[-1]["client_metrics"] == going_on.history[-1]["client_metrics"]
    assert_equal(resumed.global_weights, going_on.global_weights)
    assert_equal(resumed.global_payload, going_on.global_payload)
