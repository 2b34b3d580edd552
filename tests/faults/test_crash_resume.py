"""SIGKILL a training process at several points, resume it, and get the same final model
as an uninterrupted run, bit for bit."""

import json
import os
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from fedbcs_fl.checkpoint import load_checkpoint

from .._tiny import tiny_argv

# A FedBCS run of three rounds: kills in round 2 and 3 leave rounds to resume.
RUN = [*tiny_argv("fedbcs", rounds=3), "--quiet"]


def _train(args, kill_at=None):
    env = dict(os.environ)
    env.pop("FEDBCS_KILL_AT", None)
    if kill_at:
        env["FEDBCS_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "fedbcs_fl.cli", "train", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    result = _train([*RUN, "--out", str(run)])
    assert result.returncode == 0, result.stderr
    return load_file(str(run / "model.safetensors"))


@pytest.mark.e2e
@pytest.mark.parametrize("kill_at", ["2:local", "2:aggregate", "2:checkpoint", "3:checkpoint"])
def test_killed_run_resumes_bit_for_bit(tmp_path, uninterrupted, kill_at):
    run = tmp_path / "run"
    killed = _train([*RUN, "--out", str(run)], kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run / "model.safetensors").exists()
    resumed = _train(["--resume", str(run), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    final = load_file(str(run / "model.safetensors"))
    assert final.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert final[key].equal(value), key
    rounds = [json.loads(line)["round"] for line in (run / "metrics.jsonl").open()]
    assert rounds == [1, 2, 3]
    assert not list(run.glob(".*.tmp")) or kill_at.endswith("checkpoint")


@pytest.mark.e2e
def test_a_kill_while_a_checkpoint_is_written_in_the_background_resumes_bit_for_bit(
    tmp_path, uninterrupted
):
    run = tmp_path / "run"
    # Without --quiet: the progress bars show which round was training at the kill.
    loud = [arg for arg in RUN if arg != "--quiet"]
    killed = _train([*loud, "--out", str(run)], kill_at="2:in-flight")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "round 3 site-A" in killed.stderr  # round 3 had begun while round 2's was written
    assert load_checkpoint(run / "checkpoint.pt")["round"] == 1
    assert load_checkpoint(run / ".checkpoint.pt.tmp")["round"] == 2  # whole, not renamed
    resumed = _train(["--resume", str(run), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    final = load_file(str(run / "model.safetensors"))
    for key, value in uninterrupted.items():
        assert final[key].equal(value), key
    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").open()] == [1, 2, 3]


@pytest.mark.e2e
def test_resume_refuses_another_method(tmp_path):
    run = tmp_path / "run"
    assert _train([*RUN, "--rounds", "1", "--out", str(run)]).returncode == 0
    config = json.loads((run / "config.json").read_text())
    config["method"] = "fedavg"
    config["method_options"] = {}
    (run / "config.json").write_text(json.dumps(config))
    result = _train(["--resume", str(run)])
    assert result.returncode == 2
    assert "method changed, and resuming may change only rounds, data_root" in result.stderr
    assert "Traceback" not in result.stderr
