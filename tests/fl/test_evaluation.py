"""Evaluation depends on its batch size, and both engines use the run's eval_batch_size."""

import pytest
import torch
from torch import nn

from fedbcs_fl.client import evaluate_split
from fedbcs_fl.data.base import SiteData
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_config

# Two 2×2 one-channel images, the top row brighter than the bottom, each mask the top row.
IMAGES = [torch.tensor([[[2.0, 2.0], [0.0, 0.0]]]), torch.tensor([[[6.0, 6.0], [4.0, 4.0]]])]
MASK = torch.tensor([[1, 1], [0, 0]])
SPLIT = [(image, MASK) for image in IMAGES]


def batch_statistics_model() -> nn.Module:
    """Foreground where the pixel is above the batch mean: BatchNorm without running
    statistics (as the UNet's, and the released code's) and logits (0, normalised x)."""
    head = nn.Conv2d(1, 2, kernel_size=1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
        head.bias.zero_()
    return nn.Sequential(nn.BatchNorm2d(1, affine=False, track_running_stats=False), head).eval()


def test_scores_depend_on_the_eval_batch_size():
    model = batch_statistics_model()
    # One image a batch: each is normalised by its own mean, its top row is found: Dice 1.
    assert evaluate_split(model, SPLIT, 1, torch.device("cpu"))["dice"] == pytest.approx(1.0)
    # Both in one batch (mean 3): the first image is all background (Dice 0), the second
    # all foreground (Dice 2·2 / (4 + 2) = 2/3).
    both = evaluate_split(model, SPLIT, 2, torch.device("cpu"))["dice"]
    assert both == pytest.approx((0 + 2 / 3) / 2)


@pytest.mark.parametrize("eval_batch_size, batch_size, dice", [(1, 2, 1.0), (2, 1, 1 / 3)])
def test_the_simulator_evaluates_at_eval_batch_size(eval_batch_size, batch_size, dice):
    config = tiny_config(batch_size=batch_size, eval_batch_size=eval_batch_size)
    simulation = Simulation(config, [SiteData("site-A", SPLIT, SPLIT)], progress=False)
    scores = simulation.evaluate(batch_statistics_model())
    assert scores["site-A"]["dice"] == pytest.approx(dice)
