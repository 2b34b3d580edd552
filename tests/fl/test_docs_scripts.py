"""docs/scripts/collapse_check.py, whose figures docs/results.md quotes ("Why FedProto, FPL
and FedPLVM collapse")."""

from __future__ import annotations

import importlib.util
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
