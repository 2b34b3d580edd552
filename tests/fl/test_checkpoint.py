"""The background checkpoint writer: it writes a copy of the state as it was handed over,
raises a write's error in the run's thread, and the run waits for its last write."""

from __future__ import annotations

import threading

import pytest
import torch

from fedbcs_fl import checkpoint
from fedbcs_fl.checkpoint import CHECKPOINT_NAME, CheckpointWriter, load_checkpoint
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_config, tiny_sites


@pytest.fixture
def held_writes(monkeypatch):
    """Writes of the background thread wait until the event returned is set."""
    release = threading.Event()
    write = checkpoint.save_checkpoint

    def held(*args, **kwargs):
        release.wait(timeout=60)
        write(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", held)
    return release


def test_the_state_is_written_as_it_was_handed_over(tmp_path, held_writes):
    moments, step = torch.zeros(4), torch.zeros(())
    # As an optimiser's state dict nests them: dicts by int, lists and tuples.
    state = {"round": 1, "optimizer": {"state": {0: {"exp_avg": moments}}, "groups": [(step,)]}}
    with CheckpointWriter() as checkpoints:
        checkpoints.write(tmp_path / CHECKPOINT_NAME, state)
        moments += 1  # the next round's optimiser step, before the thread has written
        step += 1
        held_writes.set()
    written = load_checkpoint(tmp_path / CHECKPOINT_NAME)["optimizer"]
    assert written["state"][0]["exp_avg"].equal(torch.zeros(4))
    assert written["groups"][0][0].equal(torch.zeros(()))


def test_leaving_the_writer_waits_for_the_last_write(tmp_path, held_writes):
    threading.Timer(0.2, held_writes.set).start()
    with CheckpointWriter() as checkpoints:
        checkpoints.write(tmp_path / CHECKPOINT_NAME, {"round": 1})
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["round"] == 1


def _full_disk():
    raise OSError(28, "No space left on device")


def test_a_write_error_is_raised_by_the_next_write_and_by_the_end(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    checkpoints = CheckpointWriter()
    with pytest.raises(OSError, match="No space left"), checkpoints:
        checkpoints.write(path, {"round": 1}, before_rename=_full_disk)
    with pytest.raises(OSError, match="No space left"), CheckpointWriter() as checkpoints:
        checkpoints.write(path, {"round": 1}, before_rename=_full_disk)
        checkpoints.write(path, {"round": 2})
    assert not path.exists()


def test_a_write_error_is_noted_on_the_error_that_ended_the_rounds(tmp_path):
    with pytest.raises(KeyError) as ended, CheckpointWriter() as checkpoints:
        checkpoints.write(tmp_path / CHECKPOINT_NAME, {"round": 1}, before_rename=_full_disk)
        raise KeyError("the round's own error")
    assert "the last checkpoint was not written: [Errno 28] No space left" in str(
        ended.value.__notes__
    )


@pytest.mark.e2e
def test_a_run_returns_after_its_last_checkpoint_and_raises_its_error(tmp_path, held_writes):
    threading.Timer(0.5, held_writes.set).start()
    run = Simulation(tiny_config(rounds=1), tiny_sites(2), tmp_path / "run", progress=False)
    run.run()
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["round"] == 1
    # The last round's checkpoint fails: the run raises it, and writes no final model.
    failing = Simulation(tiny_config(rounds=2), tiny_sites(2), tmp_path / "failing", progress=False)
    save = failing._save_checkpoint
    failing._save_checkpoint = lambda writer: (
        writer.write(tmp_path / "failing" / CHECKPOINT_NAME, {}, before_rename=_full_disk)
        if failing.completed_rounds == 2
        else save(writer)
    )
    with pytest.raises(OSError, match="No space left"):
        failing.run()
    assert [r["round"] for r in failing.history] == [1, 2]
    assert load_checkpoint(tmp_path / "failing" / CHECKPOINT_NAME)["round"] == 1
    assert not (tmp_path / "failing" / "model.safetensors").exists()
