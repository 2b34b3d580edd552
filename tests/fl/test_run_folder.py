"""The run folder: the one metrics reader, resuming's rewrite, atomic writes, the lock,
baselines, the console log, TensorBoard, and the saved model loaded back."""

import errno
import os
import signal
import subprocess
import sys

import pytest
import torch

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.client import model_weights
from fedbcs_fl.run_folder import (
    LOCK_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TENSORBOARD_DIR,
    RunFolderInUse,
    append_record,
    atomic_write_bytes,
    close_tensorboard,
    console_log,
    hold_run_folder,
    keep_records,
    load_model,
    model_from_file,
    read_baseline,
    read_records,
    save_model,
    write_config,
)

from .._tiny import tiny_argv, tiny_config


def test_a_torn_last_line_is_dropped(tmp_path):
    append_record(tmp_path, {"round": 1})
    append_record(tmp_path, {"round": 2})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"round": 3, "di')  # a kill mid-append
    assert read_records(tmp_path) == [{"round": 1}, {"round": 2}]


def test_a_broken_line_before_the_last_is_an_error_naming_it(tmp_path):
    (tmp_path / METRICS_FILE).write_text('{"round": 1}\n{"round": 2, "di\n{"round": 3}\n')
    with pytest.raises(ValueError, match=rf"{METRICS_FILE} line 2 is not a JSON record"):
        read_records(tmp_path)


def test_a_folder_without_records_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is .* a fedbcs run folder"):
        read_records(tmp_path)


def test_resuming_keeps_the_records_up_to_the_checkpoint_and_no_torn_line(tmp_path):
    for r in (1, 2, 3):
        append_record(tmp_path, {"round": r, "dice": {"A": 0.5 + r / 7}})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"round": 4')
    written = (tmp_path / METRICS_FILE).read_text().splitlines(keepends=True)
    assert (
        keep_records(tmp_path, 2)
        == read_records(tmp_path)
        == [
            {"round": 1, "dice": {"A": 0.5 + 1 / 7}},
            {"round": 2, "dice": {"A": 0.5 + 2 / 7}},
        ]
    )
    assert (tmp_path / METRICS_FILE).read_text() == "".join(written[:2])  # lines as written
    append_record(tmp_path, {"round": 3})
    assert [r["round"] for r in read_records(tmp_path)] == [1, 2, 3]


def test_an_atomic_write_that_fails_before_the_rename_leaves_the_old_file(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("old")

    def crash():
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(path, b"new, and longer", before_rename=crash)
    assert path.read_text() == "old"
    atomic_write_bytes(path, b"new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def _tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / TENSORBOARD_DIR))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_each_record_reaches_tensorboard_and_a_resume_replaces_the_redone_rounds(tmp_path):
    def record(r, dice):
        return {
            "round": r,
            "dice": {"A": dice},
            "mean_dice": dice,
            "client_metrics": {"A": {"loss": 1.0 / r, "steps": 3.0}},
            "bytes_up": {"A": 10},
            "bytes_down": 20,
        }

    for r in (1, 2, 3):
        append_record(tmp_path, record(r, r / 10))
    close_tensorboard(tmp_path)  # the killed process
    keep_records(tmp_path, 1)
    append_record(tmp_path, record(2, 0.9))  # the resumed one redoes round 2
    close_tensorboard(tmp_path)
    scalars = _tensorboard_scalars(tmp_path)
    assert scalars["dice/A"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.9))]
    assert scalars["loss/loss/A"] == [(1, 1.0), (2, 0.5)]
    assert scalars["bytes/up"][0] == (1, 10.0) and scalars["bytes/down"][0] == (1, 20.0)
    assert "loss/steps/A" not in scalars


def test_the_console_log_keeps_what_was_printed_and_only_a_bars_last_state(tmp_path, capsys):
    import logging
    import sys

    with console_log(tmp_path) as path:
        print("round 1  mean Dice 0.5")
        sys.stderr.write("bar  10%\rbar  50%\rbar 100%\n")
        logging.getLogger("flwr").warning("from Flower")
        print("no newline at the end", end="")
    assert capsys.readouterr().out == "round 1  mean Dice 0.5\nno newline at the end"
    lines = path.read_text().splitlines()
    assert lines[0] == "round 1  mean Dice 0.5"
    assert lines[1] == "bar 100%"
    assert lines[2].startswith("WARNING") and lines[2].endswith("from Flower")
    assert lines[3] == "no newline at the end"
    with console_log(tmp_path):
        print("resumed")
    assert path.read_text().splitlines()[-1] == "resumed"  # appended


def _saved(folder, method: str = "fedbcs"):
    config = tiny_config(method)
    write_config(folder, config)
    weights = model_weights(build_algorithm(config).build_model())
    save_model(folder, weights, config)
    return config, weights


def test_a_saved_model_loads_with_its_config(tmp_path):
    config, weights = _saved(tmp_path)
    model, loaded = load_model(tmp_path)
    assert loaded == config
    state = model.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in weights)


def test_loading_names_what_is_missing_or_does_not_fit(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json: is it a fedbcs run folder"):
        load_model(tmp_path)
    write_config(tmp_path, tiny_config("fedbcs"))
    with pytest.raises(FileNotFoundError, match=r"has no model\.safetensors: has the run finished"):
        load_model(tmp_path)
    _saved(tmp_path / "fedavg", "fedavg")
    with pytest.raises(
        ValueError,
        match=r"does not fit this model: \d+ tensor\(s\) missing .*; \d+ tensor\(s\) unexpected",
    ):
        model_from_file(tmp_path / "fedavg" / MODEL_FILE, tiny_config("fedbcs"))


# ---- records that are not a run's -------------------------------------------------------


@pytest.mark.parametrize(
    "lines, message",
    [
        ('{"round": 1}\n5\n{"round": 3}\n', "line 2 is not a round record"),
        ('{"round": 1}\n{"dice": 0.5}\n{"round": 3}\n', "line 2 is not a round record"),
        ('{"round": 1}\n{"round": "2"}\n', "line 2 is not a round record"),
        ('{"round": 1}\n{"round": 2}\n{"round": 1}\n', "line 3 is round 1, after round 2"),
    ],
    ids=["number", "no-round", "text-round", "two-runs"],
)
def test_a_line_that_is_no_round_record_of_this_run_is_an_error_naming_it(tmp_path, lines, message):
    (tmp_path / METRICS_FILE).write_text(lines)
    with pytest.raises(ValueError, match=message):
        read_records(tmp_path)


# ---- writes that fail --------------------------------------------------------------------


def test_a_write_that_fails_names_the_file_and_leaves_no_partial_copy(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device"):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert path.read_bytes() == b"old"


# ---- the lock -----------------------------------------------------------------------------

# Another process holding a folder's lock, as another run does (filelock, as hold_run_folder).
HOLDER = (
    "import sys, time, filelock\n"
    "lock = filelock.FileLock(sys.argv[1], timeout=0)\n"
    "lock.acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def held(tmp_path):
    """A run folder whose lock another process holds; yields (folder, that process)."""
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    yield folder, holder
    holder.kill()
    holder.wait()


def test_a_folder_held_by_another_process_is_refused_and_free_once_it_is_killed(held):
    folder, holder = held
    busy = pytest.raises(RunFolderInUse, match=f"{folder} is in use by another run")
    with busy, hold_run_folder(folder):
        pass
    holder.send_signal(signal.SIGKILL)  # the system releases the lock of a killed process
    holder.wait()
    with hold_run_folder(folder), hold_run_folder(folder):  # and holding is re-entrant
        pass


def test_a_second_train_on_a_folder_in_use_stops_at_once(held, capsys, data_read):
    from fedbcs_fl.cli import main

    folder, _ = held
    assert main(["train", *tiny_argv("fedavg"), "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is in use by another run" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]


def test_the_flower_server_app_refuses_a_folder_in_use(held):
    from fedbcs_fl.flower import server_app
    from fedbcs_fl.flower.settings import to_run_config

    folder, _ = held
    with pytest.raises(RunFolderInUse):
        server_app.run_server(None, to_run_config(tiny_config(), out_dir=str(folder)))
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]


def test_flower_local_refuses_a_folder_in_use_before_starting_anything(held, monkeypatch):
    from fedbcs_fl.flower import local

    def start(self):
        raise AssertionError("a deployment was started")

    monkeypatch.setattr(local.LocalDeployment, "__init__", start)
    folder, _ = held
    with pytest.raises(RunFolderInUse):
        local.run_local(tiny_config(), 2, folder)


# ---- baselines -----------------------------------------------------------------------------


def test_a_baseline_must_have_run_on_the_same_data(tmp_path):
    config = tiny_config()
    write_config(tmp_path, config)
    append_record(tmp_path, {"round": 1})
    assert read_baseline(tmp_path, config) == ("fedavg (baseline)", [{"round": 1}])
    for fields, message in (
        ({"dataset": "synthetic-prostate"}, "dataset 'synthetic-nuclei', not 'synthetic-prostate'"),
        ({"sites": ["site-A", "site-B"]}, "sites site-a, site-b, site-c, site-d"),
        ({"image_size": 64}, "image_size 32, not 64"),
        ({"n_test": 5}, "n_test 3, not 5"),
    ):
        with pytest.raises(ValueError, match=message):
            read_baseline(tmp_path, tiny_config(**fields))
    assert read_baseline(tmp_path, tiny_config(seed=3))  # another seed is what Δ is for
