"""Training on three classes: FedBCS and a prototype baseline on the ``folder`` source (2-D
and 3-D) and on synthetic-prostate-zones, with per-class prototypes and per-class metrics
in the records, the summary and ``fedbcs eval``."""

from __future__ import annotations

import math

import pytest

from fedbcs_fl.cli import main
from fedbcs_fl.data import load_sites
from fedbcs_fl.run_folder import read_records
from fedbcs_fl.simulation import Simulation
from tests.data.conftest import write_folder_site

from .._tiny import logged, tiny_argv, tiny_config

# What each method sends down after round 1, by class: per stream for FedBCS.
PRESENT = {"fedbcs": "mean_present/decoder", "fedproto": "mean_present"}
ALIGNMENT = {"fedbcs": "contra/decoder", "fedproto": "fedproto/proto"}


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["fedbcs", "fedproto"])
@pytest.mark.parametrize("volumetric", [False, True], ids=["2d", "3d"])
def test_two_rounds_on_a_three_class_folder(tmp_path, method, volumetric):
    for site in ("north", "south"):
        write_folder_site(tmp_path, site, cases=5, classes=3, volumetric=volumetric)
    config = tiny_config(method, dataset="folder", data_root=str(tmp_path))
    assert config.num_classes == 3
    simulation = Simulation(config, load_sites(config), progress=False)
    records = simulation.run()
    # Round 1's prototypes cover every class, and round 2 aligns to them.
    assert simulation.global_payload[PRESENT[method]].tolist() == [True, True, True]
    alignment = logged(records[-1], ALIGNMENT[method])
    assert len(alignment) == 2 and all(math.isfinite(v) for v in alignment)
    for record in records:
        assert set(record["dice_per_class"]) == {"north", "south"}
        for figures in record["dice_per_class"].values():
            assert set(figures) == {"1", "2"}
            assert all(0 <= v <= 1 for v in figures.values())
        assert all(math.isfinite(v) for v in record["dice"].values())


@pytest.mark.e2e
def test_train_and_eval_on_synthetic_prostate_zones_report_each_class(tmp_path, capsys):
    out = tmp_path / "run"
    argv = tiny_argv("fedbcs", dataset="synthetic-prostate-zones", rounds=1, n_test=2)
    assert main(["train", *argv, "--sites", "site-A,site-B", "--out", str(out), "--quiet"]) == 0
    (record,) = read_records(out)
    assert {tuple(v) for v in record["dice_per_class"].values()} == {("1", "2")}
    assert "| class 1 | class 2 |" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "model.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "| class 1 | class 2 |" in printed and "  class 2: Dice" in printed
    dice = record["dice_per_class"]["site-A"]["2"]
    assert f"  class 2: Dice {dice:.4f}" in printed  # eval scores the run's final model
