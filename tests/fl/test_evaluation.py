"""Evaluation: its batch size matters, both engines use the run's eval_batch_size, and the
metrics score every class (per class, and their mean over the foreground classes)."""

import math

import pytest
import torch
from torch import nn

from fedbcs_fl.client import evaluate_split
from fedbcs_fl.data.base import SiteData
from fedbcs_fl.metrics import per_class, segmentation_metrics
from fedbcs_fl.round import evaluation_fields, is_surface_round
from fedbcs_fl.simulation import Simulation

from .._tiny import tiny_config, tiny_sites

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
    assert evaluate_split(model, SPLIT, 1, torch.device("cpu"), 2)["dice"] == pytest.approx(1.0)
    # Both in one batch (mean 3): the first image is all background (Dice 0), the second
    # all foreground (Dice 2·2 / (4 + 2) = 2/3).
    both = evaluate_split(model, SPLIT, 2, torch.device("cpu"), 2)["dice"]
    assert both == pytest.approx((0 + 2 / 3) / 2)


@pytest.mark.parametrize("eval_batch_size, batch_size, dice", [(1, 2, 1.0), (2, 1, 1 / 3)])
def test_the_simulator_evaluates_at_eval_batch_size(eval_batch_size, batch_size, dice):
    config = tiny_config(batch_size=batch_size, eval_batch_size=eval_batch_size)
    simulation = Simulation(config, [SiteData("site-A", SPLIT, SPLIT)], progress=False)
    scores = simulation.evaluate(batch_statistics_model())
    assert scores["site-A"]["dice"] == pytest.approx(dice)


# ---- any number of classes ------------------------------------------------------------------


def _three_class_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """An 8×8 mask with a 2×2 square of class 1 and a 2×4 bar of class 2, and a prediction
    with the bar exact and the square shifted one column right."""
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 1:3, 1:3], mask[0, 5:7, 4:8] = 1, 2
    pred = torch.zeros_like(mask)
    pred[0, 1:3, 2:4], pred[0, 5:7, 4:8] = 1, 2
    return pred, mask


def test_per_class_figures_match_a_hand_computation_and_their_mean():
    scores = segmentation_metrics(*_three_class_pair(), num_classes=3)
    # Class 1: the shifted square overlaps in 2 of 4 pixels: Dice 2·2 / (4 + 4) = 0.5; half
    # of each square's pixels lie on the other, half one pixel off: HD95 1, ASSD 0.5.
    # Class 2: exact: Dice 1, distances 0.
    expected = {"dice/1": 0.5, "hd95/1": 1.0, "assd/1": 0.5, "dice/2": 1.0, "hd95/2": 0.0}
    assert {k: scores[k] for k in expected} == pytest.approx(expected)
    assert (scores["dice"], scores["hd95"], scores["assd"]) == pytest.approx((0.75, 0.5, 0.25))


def test_a_class_absent_from_mask_and_prediction_scores_dice_1_and_no_distance():
    scores = segmentation_metrics(*_three_class_pair(), num_classes=4)
    assert scores["dice/3"] == 1.0 and math.isnan(scores["hd95/3"])
    assert scores["dice"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert scores["hd95"] == pytest.approx(0.5)  # the classes where it is defined


def test_two_classes_score_the_foreground_as_before():
    pred, mask = (t.clamp(max=1) for t in _three_class_pair())
    scores = segmentation_metrics(pred, mask, num_classes=2)
    assert scores["dice"] == scores["dice/1"] and scores["hd95"] == scores["hd95/1"]
    assert set(per_class(scores, "dice")) == {"1"}


def test_records_carry_each_sites_figures_per_class():
    scores = segmentation_metrics(*_three_class_pair(), num_classes=3)
    fields = evaluation_fields({"site-A": scores, "site-B": {**scores, "dice/2": 0.0}})
    assert fields["dice_per_class"] == {
        "site-A": {"1": 0.5, "2": 1.0},
        "site-B": {"1": 0.5, "2": 0.0},
    }
    assert fields["hd95_per_class"]["site-A"] == {"1": 1.0, "2": 0.0}
    assert fields["mean_dice"] == scores["dice"]


# ---- HD95 and ASSD only where asked (issue 18) -----------------------------------------------


def test_without_distances_dice_alone_is_computed_and_the_same():
    pair = _three_class_pair()
    scores = segmentation_metrics(*pair, num_classes=3, distances=False)
    assert set(scores) == {"dice", "dice/1", "dice/2", "empty_pred"}
    every = segmentation_metrics(*pair, num_classes=3)
    assert scores == {key: every[key] for key in scores}
    fields = evaluation_fields({"site-A": scores})
    assert set(fields) == {"dice", "mean_dice", "dice_per_class"}


@pytest.mark.parametrize(
    "rounds, eval_every, every, surface",
    [
        (5, 1, None, [5]),  # the default: the last round only
        (5, 1, 2, [2, 4, 5]),
        (7, 2, 3, [6, 7]),  # evaluated rounds 2, 4, 6, 7: the multiples of 3 among them
    ],
)
def test_surface_rounds_are_the_last_and_the_evaluated_multiples_of_n(
    rounds, eval_every, every, surface
):
    config = tiny_config(rounds=rounds, eval_every=eval_every, surface_metrics_every=every)
    assert [r for r in range(1, rounds + 1) if is_surface_round(config, r)] == surface


@pytest.mark.e2e
@pytest.mark.parametrize("every, surface", [(None, [3]), (2, [2, 3])])
def test_a_run_records_distances_on_its_surface_rounds_only(every, surface):
    config = tiny_config(rounds=3, surface_metrics_every=every)
    history = Simulation(config, tiny_sites(2), progress=False).run()
    assert all("dice" in record and "dice_per_class" in record for record in history)
    distances = {"hd95", "assd", "mean_hd95", "mean_assd", "hd95_per_class", "assd_per_class"}
    for record in history:
        kept = distances & set(record)
        assert kept == (distances if record["round"] in surface else set()), record["round"]
