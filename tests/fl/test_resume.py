"""``fedbcs train --resume``: the run's config.json is the configuration. Options given
with it must agree with it, except ``--rounds`` (and ``--data-root``); a config.json edited
since the checkpoint, fewer rounds than are done, or a metrics line that is not a round
record stop the command before it reads any data."""

from __future__ import annotations

import json

import pytest

from fedbcs_fl.checkpoint import CHECKPOINT_NAME, save_checkpoint
from fedbcs_fl.cli import main
from fedbcs_fl.config import RunConfig
from fedbcs_fl.run_folder import CONFIG_FILE, METRICS_FILE, append_record, write_config

from .._tiny import tiny_argv, tiny_config


@pytest.fixture
def killed_run(tmp_path):
    """A FedBCS run of 3 rounds killed after round 2: config.json, two records, and a
    checkpoint of round 2 holding the configuration it ran with."""
    config = tiny_config("fedbcs", rounds=3)
    write_config(tmp_path, config)
    for r in (1, 2):
        append_record(tmp_path, {"round": r})
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"round": 2, "config": config.to_json()})
    return tmp_path


def resumed_config(data_read, argv: list[str]) -> RunConfig:
    """The configuration ``fedbcs train argv`` reads the data with."""
    with pytest.raises(data_read) as read:
        main(["train", *argv])
    return read.value.args[0]


def refused(capsys, argv: list[str]) -> str:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_runs_own_options_and_the_ones_at_their_default_resume_it(data_read, killed_run):
    saved = RunConfig.load(killed_run / CONFIG_FILE)
    assert resumed_config(data_read, ["--resume", str(killed_run)]) == saved
    same = [*tiny_argv("fedbcs", rounds=3), "--tau", "0.005", "--quiet", "--workers", "0"]
    assert resumed_config(data_read, [*same, "--resume", str(killed_run)]) == saved


def test_rounds_may_grow(data_read, killed_run):
    config = resumed_config(data_read, ["--resume", str(killed_run), "--rounds", "5"])
    assert config.rounds == 5


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--method", "fedavg"], "--method"),
        (["--lr", "0.5"], "--lr"),
        (["--batch-size", "5", "--seed", "3"], "--batch-size, --seed"),
        (["--tau", "0.1"], "--tau"),
        (["--no-fsr"], "--fsr"),
    ],
)
def test_other_options_that_differ_from_the_run_are_refused(
    capsys, data_read, killed_run, argv, named
):
    err = refused(capsys, ["--resume", str(killed_run), *argv])
    assert f"{named} differ from it, and resuming may change only --rounds, --data-root" in err


def test_out_beside_resume_must_be_the_same_folder(capsys, data_read, killed_run, tmp_path):
    other = tmp_path / "other"
    err = refused(capsys, ["--resume", str(killed_run), "--out", str(other)])
    assert f"leave out --out {other}" in err
    resumed_config(data_read, ["--resume", str(killed_run), "--out", str(killed_run)])


def test_fewer_rounds_than_are_done_are_refused(capsys, data_read, killed_run):
    err = refused(capsys, ["--resume", str(killed_run), "--rounds", "1"])
    assert "has done 2 rounds: rounds must be at least that, got 1" in err


def test_a_config_json_edited_since_the_checkpoint_is_refused(capsys, data_read, killed_run):
    config = json.loads((killed_run / CONFIG_FILE).read_text())
    config["lr"], config["rounds"] = 0.01, 4
    (killed_run / CONFIG_FILE).write_text(json.dumps(config))
    err = refused(capsys, ["--resume", str(killed_run)])
    assert "started with other settings than it is resumed with: lr changed" in err


def test_a_corrupt_line_in_the_middle_of_the_metrics_is_named(capsys, data_read, killed_run):
    lines = (killed_run / METRICS_FILE).read_text().splitlines()
    lines.insert(1, '{"round": 2, "di')
    (killed_run / METRICS_FILE).write_text("\n".join(lines) + "\n")
    err = refused(capsys, ["--resume", str(killed_run)])
    assert f"{killed_run / METRICS_FILE} line 2 is not a JSON record" in err


def test_a_folder_without_a_run_is_named(capsys, tmp_path):
    err = refused(capsys, ["--resume", str(tmp_path / "nothing")])
    assert "no run to resume there (no config.json)" in err


@pytest.mark.e2e
def test_a_checkpoint_keeps_the_config_it_was_written_with(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *tiny_argv("fedavg", rounds=1), "--quiet", "--out", str(run)]) == 0
    config = json.loads((run / CONFIG_FILE).read_text())
    config["batch_size"] = 2
    (run / CONFIG_FILE).write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--rounds", "2"]) == 2
    assert "batch_size changed" in capsys.readouterr().err
