"""``fedbcs train`` and ``check-data`` on tiny real-layout data sets."""

import json

import pytest

from fedbcs_fl.cli import main

from .._tiny import tiny_argv


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
