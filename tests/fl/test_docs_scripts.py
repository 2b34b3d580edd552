"""docs/scripts/: collapse_check.py and privacy_curve.py, whose figures docs/results.md
quotes ("Why FedProto, FPL and FedPLVM collapse", "Privacy–utility")."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fedbcs_fl.simulation import Simulation
from tests._tiny import tiny_algorithm, tiny_config, tiny_sites

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "scripts" / "collapse_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("collapse_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_head_margins_are_own_logit_minus_the_best_other():
    model = tiny_algorithm("fpl").build_model()
    (head,) = [m for n, m in model.named_modules() if n.endswith("segmentation_head")]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, 0, 0, 0] = 1.0  # class 0 reads feature 0, class 1 feature 1
        head.weight[1, 1, 0, 0] = 1.0
    means = torch.zeros(2, head.in_channels)
    means[0, 0], means[1, 1] = 2.0, 1.0
    assert _script().head_margins(model, means) == [2.0, 1.0]
    # Each prototype on the other class's side: both margins negative.
    assert _script().head_margins(model, means.flip(0)) == [-1.0, -2.0]


@pytest.mark.e2e
def test_the_script_diagnoses_a_finished_run(tmp_path, capsys):
    config = tiny_config("fedproto")
    Simulation(config, tiny_sites(), out_dir=tmp_path, progress=False).run()
    _script().main(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("head margin at each class's global prototype: [")
    sites = [site.name for site in tiny_sites()]
    assert [line.split(":")[0] for line in lines[1:]] == sites


def _privacy_script():
    path = SCRIPT.with_name("privacy_curve.py")
    spec = importlib.util.spec_from_file_location("privacy_curve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(folder: Path, dice: list[float], rounds: int = 2, epsilon: float | None = None):
    """A run folder with two rounds recorded, the second scoring ``dice`` on two sites: a
    run still going when its config asks for more ``rounds``."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(tiny_config("fedbcs", rounds=rounds).to_json())
    record = {"round": 2, "dice": dict(zip(("site-A", "site-B"), dice, strict=True))}
    if epsilon is not None:
        record["proto_dp_epsilon"] = {"site-A": epsilon / 2, "site-B": epsilon}
    lines = [json.dumps({"round": 1}), json.dumps(record)]
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def test_the_privacy_curve_reads_finished_runs_only(tmp_path):
    privacy, reference = tmp_path / "privacy", tmp_path / "reference"
    _fake_run(privacy / "eps-8" / "fedbcs" / "seed0", [0.5, 0.7], epsilon=8.0)
    _fake_run(privacy / "eps-8" / "fedbcs" / "seed1", [0.6, 0.6], epsilon=8.0)
    _fake_run(privacy / "eps-8" / "fedbcs" / "seed2", [0.0, 0.0], rounds=30, epsilon=1.0)
    _fake_run(privacy / "eps-1" / "fedbcs" / "seed0", [0.2, 0.4], epsilon=1.0)
    _fake_run(reference / "fedavg" / "seed0", [0.8, 0.8])
    _fake_run(reference / "fedbcs" / "seed0", [0.7, 0.9])
    script = _privacy_script()
    points = script.curve(privacy)
    assert points == [
        (1.0, [pytest.approx(30.0)], [1.0]),
        (8.0, [pytest.approx(60.0)] * 2, [8.0, 8.0]),  # seed 2 still going: left out
    ]
    rows = script.table(points, [80.0], [80.0]).splitlines()
    assert rows[2].startswith("| fedbcs | 1 | 1 | 30.00 ± 0.00 (1) | 30.00 | -50.00 |")
    assert rows[3].startswith("| fedbcs | 8 | 8 | 60.00 ± 0.00 (2) | 60.00 / 60.00 | -20.00 |")
    png = tmp_path / "curve.png"
    script.main(privacy, reference, png)
    assert png.read_bytes().startswith(b"\x89PNG")
