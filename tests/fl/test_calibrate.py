"""``fedbcs calibrate-data``: the figures on hand-made inputs, a tiny run, bad input."""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedbcs_fl.calibrate import (
    TARGETS,
    Calibration,
    Target,
    fedavg_figures,
    image_statistics,
    pooled_figures,
    style_figures,
    transfer_figures,
    variance_ratio,
)
from fedbcs_fl.cli import main
from fedbcs_fl.config import RunConfig
from fedbcs_fl.data.base import SiteData
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_argv, tiny_config, tiny_sites

# Trained on row, tested on column, Dice in %.
MATRIX = [[80, 60, 50], [40, 90, 70], [30, 30, 60]]
FEDAVG = [70, 82, 75]
POOLED = [85, 80, 90]


def test_transfer_gap_and_margin_arithmetic():
    transfer = transfer_figures(MATRIX)
    assert transfer["in_site"] == [80, 90, 60]
    assert transfer["other_sites"] == [55, 55, 30]
    assert transfer["site_loss"] == [25, 35, 30]
    assert transfer["loss"] == 30
    fedavg = fedavg_figures(FEDAVG)
    assert fedavg["mean_dice"] == pytest.approx(227 / 3)
    assert fedavg["site_gap"] == 12  # 82 - 70
    pooled = pooled_figures(POOLED, FEDAVG)
    assert pooled["mean_dice"] == 85
    assert pooled["margin"] == 15  # 85 - 70, FedAvg's worst site


def test_target_bounds_are_inclusive():
    assert Target(("g", "k"), 70, 85).met(70) and Target(("g", "k"), 70, 85).met(85)
    assert not Target(("g", "k"), 70, 85).met(69.99)
    assert not Target(("g", "k"), 70, 85).met(85.01)
    assert Target(("g", "k"), low=8).met(8) and not Target(("g", "k"), low=8).met(7.99)
    assert str(Target(("g", "k"), 70, 85)) == "in [70, 85]"
    assert str(Target(("g", "k"), low=15)) == "≥ 15"


def test_variance_ratio_between_over_within():
    a = np.array([[0.0], [2.0]])
    # Site means 1 and 11: between-site variance 25; each site's variance 1.
    assert variance_ratio([a, a + 10]).tolist() == [25.0]
    assert variance_ratio([a, a]).tolist() == [0.0]
    # Per column; sites of different sizes weigh the same.
    b = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 3.0]])  # means (2, 5/3), variances (8/3, 8/9)
    c = np.array([[4.0, 5.0], [6.0, 5.0]])  # means (5, 5), variances (1, 0)
    expected = [(1.5**2) / ((8 / 3 + 1) / 2), ((5 / 3) ** 2) / ((8 / 9) / 2)]
    assert variance_ratio([b, c]) == pytest.approx(expected)


def test_image_statistics_low_frequencies_in_cycles_per_image():
    for size in (32, 64):
        x = torch.arange(size, dtype=torch.float64) / size
        images = torch.stack(
            [
                torch.full((size, size), 0.3),
                (0.5 + 0.2 * torch.cos(2 * math.pi * 2 * x)).expand(size, size),
                (0.5 + 0.2 * torch.cos(2 * math.pi * 10 * x)).expand(size, size),
            ]
        )[:, None]
        stats = image_statistics(images)
        assert stats["channel_mean"][:, 0] == pytest.approx([0.3, 0.5, 0.5])
        assert stats["channel_std"][:, 0] == pytest.approx([0, 0.2 / math.sqrt(2), 0.2 / 2**0.5])
        # A cosine of amplitude a puts a/2 on ±f; 112 frequencies lie at 0 < r <= 6.
        assert stats["low_freq_amplitude"][:, 0] == pytest.approx([0, 0.2 / 112, 0], abs=1e-12)


def _site(name, images):
    masks = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.long)
    return SiteData(name, TensorDataset(images, masks), TensorDataset(images, masks))


def test_style_ratios_on_known_shifts():
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    same = style_figures([_site("A", images), _site("B", images.clone())])
    assert same["ratio"] == {
        "channel_mean": 0.0,
        "channel_std": 0.0,
        "low_freq_amplitude": 0.0,
        "overall": 0.0,
    }
    # An offset moves every channel mean by 0.5 and leaves std and spectrum (the mean
    # is not a low frequency) as they were.
    shifted = style_figures([_site("A", images), _site("B", images + 0.5)])
    within = image_statistics(images)["channel_mean"].var(0)
    ratio = shifted["ratio"]
    assert ratio["channel_mean"] == pytest.approx(np.mean(0.25**2 / within))
    assert ratio["channel_std"] == pytest.approx(0, abs=1e-9)
    assert ratio["low_freq_amplitude"] == pytest.approx(0, abs=1e-9)
    assert ratio["overall"] == pytest.approx(ratio["channel_mean"] / 3)
    means = shifted["site_means"]["channel_mean"]
    assert np.subtract(means[1], means[0]) == pytest.approx([0.5] * 3)


def _hand_made_seed(offset: float) -> dict:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sites = [_site(f"site-{n}", images + i) for i, n in enumerate("ABC")]
    return {
        "transfer": transfer_figures(np.add(MATRIX, offset)),
        "fedavg": fedavg_figures(np.add(FEDAVG, offset)),
        "pooled": pooled_figures(np.add(POOLED, offset), np.add(FEDAVG, offset)),
        "style": style_figures(sites),
    }


def test_targets_and_tables_of_a_hand_made_calibration():
    # Two seeds 2 points apart: every Dice figure is the middle one ± 1.
    per_seed = [_hand_made_seed(-1), _hand_made_seed(1)]
    calibration = Calibration(
        RunConfig().resolved(), [0, 1], ["site-A", "site-B", "site-C"], per_seed
    )
    checks = {row["name"]: row for row in calibration.checks()}
    assert list(checks) == list(TARGETS)
    assert checks["FedAvg mean Dice (%)"]["mean"] == pytest.approx(227 / 3)
    assert checks["FedAvg mean Dice (%)"]["std"] == pytest.approx(1)
    assert [row["pass"] for row in checks.values()] == [True, True, True, True]
    markdown = calibration.markdown()
    assert "| FedAvg worst-to-best site gap (points) | 12.00 ± 0.00 | ≥ 8 | PASS |" in markdown
    assert "| site-local transfer loss (points) | 30.00 ± 0.00 | ≥ 15 | PASS |" in markdown
    row = "| site-B | 40.00 ± 1.00 | 90.00 ± 1.00 | 70.00 ± 1.00 | 90.00 ± 1.00 | 55.00 ± 1.00 "
    assert row + "| 35.00 ± 0.00 |" in markdown
    # compare's Table 1 layout: best bold, second underlined, Δ of the AVG vs FedAvg.
    fedavg_row = (
        "| FedAvg | 70.00 ± 1.00 | <u>82.00 ± 1.00</u> | <u>75.00 ± 1.00</u> | 75.67 ± 1.00 | - |"
    )
    assert fedavg_row in markdown
    assert "| **85.00 ± 1.00** | +9.33 |" in markdown

    # The mean over seeds is checked: gaps 12 and 5 give 8.5 ± 3.5, which passes.
    narrow = _hand_made_seed(0)
    narrow["fedavg"] = fedavg_figures([70, 75, 75])
    seeds = [_hand_made_seed(0), narrow]
    spread = Calibration(RunConfig().resolved(), [0, 1], ["site-A", "site-B", "site-C"], seeds)
    row = "| FedAvg worst-to-best site gap (points) | 8.50 ± 3.50 | ≥ 8 | PASS |"
    assert row in spread.markdown()

    high = [_hand_made_seed(12)]  # FedAvg mean 87.67: above the range
    markdown = Calibration(RunConfig().resolved(), [0], ["site-A", "site-B", "site-C"], high)
    assert "| FedAvg mean Dice (%) | 87.67 ± 0.00 | in [70, 85] | FAIL |" in markdown.markdown()


@pytest.mark.e2e
def test_tiny_run_writes_the_reports_and_reuses_the_engine(tmp_path, capsys, eval_batch_sizes):
    out = tmp_path / "calibration"
    args = ["calibrate-data", *tiny_argv(sites=["site-A", "site-B"], rounds=1)]
    # One image per batch: BatchNorm then scores differently than with the whole split.
    assert main([*args, "--eval-batch-size", "1", "--quiet", "--out", str(out)]) == 0
    assert eval_batch_sizes and set(eval_batch_sizes) == {1}
    assert "## Targets" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "calibration.json",
        "calibration.md",
        "calibration.png",
    }
    document = json.loads((out / "calibration.json").read_text(encoding="utf-8"))
    assert document["sites"] == ["site-A", "site-B"] and document["seeds"] == [0]
    assert document["config"]["method"] == "fedavg" and document["config"]["rounds"] == 1
    assert [t["name"] for t in document["targets"]] == list(TARGETS)
    assert all(isinstance(t["pass"], bool) for t in document["targets"])
    figures = document["figures"]
    assert np.shape(figures["transfer"]["matrix"]["mean"]) == (2, 2)
    for group, key in [("fedavg", "dice"), ("pooled", "dice"), ("transfer", "in_site")]:
        assert len(figures[group][key]["mean"]) == 2
    assert np.shape(figures["style"]["site_means"]["channel_mean"]["mean"]) == (2, 3)
    assert set(figures["style"]["ratio"]) == {
        "channel_mean",
        "channel_std",
        "low_freq_amplitude",
        "overall",
    }
    (seed,) = document["per_seed"]
    assert seed["seed"] == 0 and seed["fedavg"]["dice"] == figures["fedavg"]["dice"]["mean"]
    markdown = (out / "calibration.md").read_text(encoding="utf-8")
    assert "## Site-local transfer" in markdown and "## Style statistics" in markdown

    # The same Simulation, alone on site-A and then over both sites, gives the same Dice:
    # every model is scored as the engines score the global model.
    config = tiny_config(sites=["site-A", "site-B"], rounds=1, eval_batch_size=1)
    sites = tiny_sites(sites=["site-A", "site-B"])
    alone = Simulation(config, sites[:1], progress=False).run()[-1]["dice"]["site-A"]
    assert seed["transfer"]["matrix"][0][0] == pytest.approx(100 * alone)
    fedavg = Simulation(config, sites, progress=False).run()[-1]["dice"]
    assert seed["fedavg"]["dice"] == pytest.approx([100 * fedavg[s] for s in ("site-A", "site-B")])


def _exit_and_error(args, capsys):
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "must be one of synthetic-nuclei, synthetic-prostate,"),
        (["--seeds", "0"], "must be a positive integer"),
        (["--sites", "site-A"], "need at least 2"),
        (["--sites", "site-A,site-Z"], "valid sites"),
        (["--seed", "3"], "give --seeds N, not --seed"),
        (["--dataset", "prostate"], "give --data-root"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, capsys, tmp_path):
    command = ["calibrate-data", *tiny_argv(), "--quiet", "--out", str(tmp_path), *args]
    code, lines = _exit_and_error(command, capsys)
    assert code == 2
    assert len(lines) == 1 and message in lines[0], lines
