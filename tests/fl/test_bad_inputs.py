"""Every bad input to ``fedbcs train`` and ``fedbcs eval``: one line naming what is wrong,
a non-zero exit, no traceback, and nothing read or trained before the refusal.

``data_read`` (tests/conftest.py) makes reading the data an error of its own kind, so a
test whose command got past its checks fails by raising it.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.cli import main
from fedbcs_fl.client import model_weights
from fedbcs_fl.config import RunConfig
from fedbcs_fl.run_folder import MODEL_FILE, append_record, save_model, write_config

from .._tiny import tiny_argv, tiny_config


def refused(capsys, argv: list[str], message: str) -> str:
    """Run ``fedbcs argv``; check it exits 2 with one line holding ``message`` (argparse
    exits itself on a value no option may take; the command returns on the others)."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "inf"], "argument --lr: must be in (0, inf); got inf"),
        (["--lr", "nan"], "argument --lr: must be in (0, inf); got nan"),
        (["--lr", "0"], "argument --lr: must be in (0, inf); got 0.0"),
        (
            ["--screen-norm-factor", "nan"],
            "argument --screen-norm-factor: must be in [0, inf); got nan",
        ),
        (["--client-timeout", "0"], "argument --client-timeout: must be in (0, inf); got 0.0"),
        (["--client-timeout", "-1"], "argument --client-timeout: must be in (0, inf); got -1.0"),
        (["--weight-decay", "nan"], "argument --weight-decay: must be in [0, inf); got nan"),
        (["--momentum", "inf"], "argument --momentum: must be in [0, 1]; got inf"),
        (["--seed", "-1"], "argument --seed: must be in [0, 4294967295]; got -1"),
        (
            ["--init-features", "100000"],
            "argument --init-features: must be in [1, 1024]; got 100000",
        ),
        (["--n-train", "1e9"], "GiB of synthetic images, held in memory, and this machine has"),
        (["--n-train", "1000000000"], "n_train 1000000000, n_test 3 and image_size 32 ask for"),
    ],
)
def test_bad_numbers_are_refused_before_the_data_are_read(
    capsys, data_read, tmp_path, args, message
):
    refused(capsys, ["train", *tiny_argv("fedavg"), *args, "--out", str(tmp_path)], message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": math.inf}, "lr must be in (0, inf); got inf"),
        ({"seed": 2**32}, "seed must be in [0, 4294967295]; got 4294967296"),
        ({"proto_dp_clip": 0.0}, "proto_dp_clip must be in (0, inf); got 0.0"),
        ({"slice_neighbours": -1}, "slice_neighbours must be in [0, inf); got -1"),
    ],
)
def test_a_config_built_in_code_is_checked_when_resolved(change, message):
    """The library path (``RunConfig(...)``, as Flower and compare build them) meets the
    same declarations as the command line."""
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(tiny_config(), **change).resolved()


def test_an_edited_config_json_with_a_bad_value_is_refused(capsys, data_read, tmp_path):
    write_config(tmp_path, tiny_config())
    append_record(tmp_path, {"round": 1})
    text = (tmp_path / "config.json").read_text().replace('"lr": 0.001', '"lr": "fast"')
    (tmp_path / "config.json").write_text(text)
    refused(capsys, ["train", "--resume", str(tmp_path)], "lr must be a number; got 'fast'")


# ---- the run folder -------------------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write in: a read-only mount for root, who may write anywhere
    else; a folder without write permission for anyone else."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("root, and no read-only mount can be made here")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_out_on_a_file_under_a_file_or_read_only_is_refused_first(
    capsys, data_read, tmp_path, read_only_dir
):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    train = ["train", *tiny_argv("fedavg"), "--out"]
    refused(capsys, [*train, str(afile)], f"{afile} is a file, not a run folder")
    refused(capsys, [*train, str(afile / "run")], f"{afile / 'run'} cannot be a run folder")
    refused(capsys, [*train, str(read_only_dir / "run")], "cannot write in run folder")
    assert afile.read_text() == "not a folder"


def test_a_baseline_of_another_data_set_is_refused_before_training(capsys, data_read, tmp_path):
    base = tmp_path / "base"
    write_config(base, tiny_config(dataset="synthetic-prostate"))
    append_record(base, {"round": 1, "dice": {"site-A": 0.5}, "mean_dice": 0.5})
    run = tmp_path / "run"
    argv = ["train", *tiny_argv("fedavg"), "--out", str(run), "--baseline", str(base)]
    refused(capsys, argv, "dataset 'synthetic-prostate', not 'synthetic-nuclei'")
    assert not (run / "metrics.jsonl").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_file(
    capsys, tmp_path, monkeypatch
):
    import fedbcs_fl.simulation

    fsync = os.fsync

    def disk_full_for_checkpoints(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("checkpoint.pt.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_for_checkpoints)
    monkeypatch.setattr(fedbcs_fl.simulation.Simulation, "run_round", _canned_round)
    run = tmp_path / "run"
    line = refused(
        capsys,
        ["train", *tiny_argv("fedavg", rounds=1), "--quiet", "--out", str(run)],
        "No space left on device",
    )
    assert f"cannot write {run / 'checkpoint.pt'}" in line and f"--resume {run}" in line
    written = [".lock", "config.json", "metrics.jsonl", "tensorboard", "train.log"]
    assert sorted(p.name for p in run.iterdir()) == written  # no partial checkpoint


def _canned_round(simulation, round_index):
    """A round that trains nothing: what is under test is what happens around it."""
    return {"round": round_index, "aggregated": [], "faults": {}, "rejected": {}}


# ---- fedbcs eval ------------------------------------------------------------------------


@pytest.fixture
def saved_model(tmp_path):
    """A run folder with a config.json and the tiny FedAvg's initial model."""
    config = tiny_config("fedavg")
    write_config(tmp_path, config)
    torch.manual_seed(0)
    save_model(tmp_path, model_weights(build_algorithm(config).build_model()), config)
    return tmp_path / MODEL_FILE


def _safetensors(weights: dict) -> bytes:
    from safetensors.torch import save

    return save(weights)


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda data, weights: os.urandom(len(data)), "is not a readable safetensors model"),
        (lambda data, weights: data[: len(data) // 2], "is not a readable safetensors model"),
        (lambda data, weights: _pickled(weights), "is not a readable safetensors model"),
        (
            lambda data, weights: _safetensors(dict(list(weights.items())[1:])),
            "does not fit this model: 1 tensor(s) missing",
        ),
        (
            lambda data, weights: _safetensors({**weights, "extra": torch.zeros(1)}),
            "1 tensor(s) unexpected (extra)",
        ),
        (
            lambda data, weights: _safetensors(_first(weights, lambda w: w[:1].contiguous())),
            "; this model's is torch.float32",
        ),
        (
            lambda data, weights: _safetensors(_first(weights, lambda w: w * float("nan"))),
            "has NaN or infinite weights in 1 tensor(s)",
        ),
    ],
    ids=["corrupt", "truncated", "pickle", "missing-key", "extra-key", "shape", "nan"],
)
def test_eval_refuses_a_bad_model_file_before_the_data_are_read(
    capsys, data_read, saved_model, spoil, message
):
    from safetensors.torch import load_file

    weights = load_file(str(saved_model))
    saved_model.write_bytes(spoil(saved_model.read_bytes(), weights))
    refused(capsys, ["eval", "--checkpoint", str(saved_model)], message)


def test_eval_of_a_sound_model_gets_to_the_data(data_read, saved_model):
    with pytest.raises(data_read):
        main(["eval", "--checkpoint", str(saved_model)])


def _pickled(weights: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    return buffer.getvalue()


def _first(weights: dict, change) -> dict:
    name = next(iter(weights))
    return {**weights, name: change(weights[name])}


@pytest.mark.e2e
def test_the_command_line_has_no_traceback_for_a_file_as_out(tmp_path):
    """The same through a process of its own (the exit status the shell sees)."""
    afile = tmp_path / "afile"
    afile.touch()
    result = subprocess.run(
        [sys.executable, "-c", _MAIN, "train", "--out", str(afile)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("is a file, not a run folder"), result.stderr


_MAIN = "import sys; from fedbcs_fl.cli import main; sys.exit(main(sys.argv[1:]))"


def test_run_config_refuses_the_same_values_as_the_command(tmp_path):
    """The checks are the configuration's: a Flower run config or a script meets them too."""
    for fields, message in (
        ({"lr": float("inf")}, "lr must be in (0, inf)"),
        ({"client_timeout": 0.0}, "client_timeout must be in (0, inf)"),
        ({"screen_norm_factor": float("nan")}, "screen_norm_factor must be in [0, inf)"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            RunConfig(**fields).resolved()
