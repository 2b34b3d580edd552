"""``fedbcs train`` and ``check-data`` on tiny real-layout data sets, and resuming a run on
one after cases were added to it."""

import dataclasses
import json

import pytest

from fedbcs_fl.cli import main
from fedbcs_fl.data import load_sites
from fedbcs_fl.data.splits import write_split
from fedbcs_fl.run_folder import append_record, write_config
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_argv, tiny_config
from .conftest import write_prostate_case


@pytest.mark.e2e
def test_train_on_tiny_prostate(prostate_root, tmp_path):
    run = tmp_path / "run"
    tiny = tiny_argv(
        "fedbcs", dataset="prostate", data_root=str(prostate_root), sites=["BIDMC", "HK"], rounds=1
    )
    assert main(["train", *tiny, "--quiet", "--out", str(run)]) == 0
    record = json.loads((run / "metrics.jsonl").read_text())
    assert set(record["dice"]) == {"BIDMC", "HK"}
    split = json.loads((run / "split.json").read_text())
    for site, parts in split.items():
        cases = [c for part in parts.values() for c in part]
        assert len(cases) == len(set(cases)), f"{site}: a case is in two splits"


def test_train_refuses_bad_data(prostate_root, tmp_path, capsys):
    (prostate_root / "HK" / "Case00_Segmentation.nii.gz").unlink()
    args = [
        "train",
        "--dataset",
        "prostate",
        "--data-root",
        str(prostate_root),
        "--quiet",
        "--sites",
        "BIDMC,HK",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Case00" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_check_data_reports_sites(prostate_root, capsys):
    args = ["check-data", "--dataset", "prostate", "--data-root", str(prostate_root)]
    assert main([*args, "--sites", "BIDMC,HK"]) == 0
    out = capsys.readouterr().out
    assert "BIDMC" in out and "HK" in out and "no problems found" in out


class Trained(Exception):
    """The resumed run got to its rounds."""


def trained(simulation):
    raise Trained


@pytest.fixture
def killed_prostate_run(prostate_root, tmp_path):
    """A prostate run killed in round 1: its config.json and split.json, one record."""
    run = tmp_path / "run"
    config = tiny_config("fedavg", dataset="prostate", data_root=str(prostate_root))
    config = dataclasses.replace(config, sites=["BIDMC", "HK"])
    write_config(run, config)
    write_split(load_sites(config), run / "split.json")
    append_record(run, {"round": 1})
    return run


def test_resume_reads_the_runs_own_split(killed_prostate_run, monkeypatch):
    import fedbcs_fl.data

    seen = []
    load = fedbcs_fl.data.load_sites

    def recording(config, workers=0):
        seen.append(config.split_file)
        return load(config, workers)

    monkeypatch.setattr(fedbcs_fl.data, "load_sites", recording)
    monkeypatch.setattr(Simulation, "run", trained)
    with pytest.raises(Trained):
        main(["train", "--resume", str(killed_prostate_run), "--quiet"])
    assert seen == [str(killed_prostate_run / "split.json")]


def test_a_case_added_since_the_run_began_stops_its_resume(
    killed_prostate_run, prostate_root, capsys, monkeypatch
):
    monkeypatch.setattr(Simulation, "run", trained)
    write_prostate_case(prostate_root / "HK", "Case05")
    assert main(["train", "--resume", str(killed_prostate_run), "--quiet"]) == 2
    assert "HK: case Case05 is in the data but in no split" in capsys.readouterr().err
