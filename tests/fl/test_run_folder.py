"""The run folder: the one metrics reader, resuming's rewrite, atomic writes, and the
saved model loaded back."""

import pytest
import torch

from fedbcs_fl.algorithms import build_algorithm
from fedbcs_fl.client import model_weights
from fedbcs_fl.run_folder import (
    METRICS_FILE,
    MODEL_FILE,
    append_record,
    atomic_write_bytes,
    keep_records,
    load_model,
    model_from_file,
    read_records,
    save_model,
    write_config,
)

from .._tiny import tiny_config


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
    with pytest.raises(ValueError, match="does not fit a fedbcs model: keys differ"):
        model_from_file(tmp_path / "fedavg" / MODEL_FILE, tiny_config("fedbcs"))
