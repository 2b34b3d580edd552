"""Loss terms on hand-made tensors, against hand or independent computations."""

import copy
import math

import pytest
import torch

from fedbcs_fl.algorithms import METHODS, build_algorithm
from fedbcs_fl.algorithms.base import LocalContext
from fedbcs_fl.config import RunConfig
from fedbcs_fl.losses import (
    capped_multi_positive_infonce,
    multi_positive_infonce,
    segmentation_loss,
    soft_dice_loss,
)

from .._tiny import tiny_config


def naive_infonce(logits, positives):
    """The textbook formula with exp, in float64: only safe for small logits."""
    e = logits.double().exp()
    return -torch.log((e * positives).sum(1) / e.sum(1))


def test_infonce_several_positives():
    logits = torch.tensor([[1.0, 0.5, -0.2, 0.3], [0.0, 2.0, 1.0, -1.0]])
    positives = torch.tensor([[True, True, False, False], [False, False, True, True]])
    loss, valid = multi_positive_infonce(logits, positives)
    assert valid.all()
    torch.testing.assert_close(loss.double(), naive_infonce(logits, positives))
    # By hand, anchor 0: −log((e^1 + e^0.5) / (e^1 + e^0.5 + e^−0.2 + e^0.3)).
    e = [math.exp(v) for v in (1.0, 0.5, -0.2, 0.3)]
    assert loss[0].item() == pytest.approx(-math.log((e[0] + e[1]) / sum(e)), rel=1e-6)


def test_infonce_anchor_whose_class_is_absent_is_excluded():
    logits = torch.tensor([[1.0, 2.0], [0.5, 0.1]])
    positives = torch.tensor([[False, False], [True, False]])
    loss, valid = multi_positive_infonce(logits, positives)
    assert valid.tolist() == [False, True]
    assert loss.shape == (1,) and torch.isfinite(loss).all()


def test_infonce_tiny_temperature_does_not_overflow():
    tau = 0.005
    cosine = torch.tensor([[0.9, 0.8, -0.7]])
    logits = cosine / tau  # 180, 160, −140: exp overflows float32
    assert torch.isinf(logits.exp()).any()
    loss, _ = multi_positive_infonce(logits, torch.tensor([[True, False, False]]))
    # −log(e^180 / (e^180 + e^160 + e^−140)) = log(1 + e^−20 + e^−320) ≈ 2e-9, which
    # float32 resolves only to its spacing at 180 (1.5e-5).
    assert torch.isfinite(loss).all()
    assert loss.item() == pytest.approx(math.log1p(math.exp(-20.0)), abs=2e-5)
    loss, _ = multi_positive_infonce(logits, torch.tensor([[False, True, False]]))
    assert loss.item() == pytest.approx(20.0 + math.log1p(math.exp(-20.0)), rel=1e-6)


def test_soft_dice_perfect_and_disjoint():
    masks = torch.tensor([[[0, 1], [1, 0]]])
    perfect = torch.nn.functional.one_hot(masks, 2).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, masks).item() == pytest.approx(0.0, abs=1e-4)
    assert soft_dice_loss(-perfect, masks).item() == pytest.approx(1.0, abs=1e-4)
    # Uniform predictions: foreground Dice = 2·(0.5·2) / (0.5·4 + 2) = 0.5.
    assert soft_dice_loss(torch.zeros(1, 2, 2, 2), masks).item() == pytest.approx(0.5, abs=1e-4)


def test_segmentation_loss_is_half_ce_plus_dice():
    gen = torch.Generator().manual_seed(0)
    logits, masks = (
        torch.randn(2, 2, 5, 5, generator=gen),
        torch.randint(0, 2, (2, 5, 5), generator=gen),
    )
    expected = 0.5 * (
        torch.nn.functional.cross_entropy(logits, masks) + soft_dice_loss(logits, masks)
    )
    torch.testing.assert_close(segmentation_loss(logits, masks), expected)


def test_released_contrast_saturates_at_small_tau_and_has_no_gradient():
    # τ = 0.005: every cosine above log(1e6)·τ ≈ 0.069 caps its exponential at 1e6, so the
    # released loss is log(M / P) (M prototypes, P of them positive) and has no gradient.
    # Cosines of 0.075 and 0.08 (logits 15 and 16) are capped by the 1e6; in float32,
    # logits of 100 would overflow exp, and the cap at 20 keeps their gradient 0, not NaN.
    values = [[0.50, 0.49, 0.08], [0.30, 0.075, 0.29]]
    cosine = torch.tensor(values, requires_grad=True)
    positives = torch.tensor([[True, False, False], [True, True, False]])
    released, valid = capped_multi_positive_infonce(cosine / 0.005, positives)
    assert valid.all()
    torch.testing.assert_close(released, torch.tensor([math.log(3 / 1), math.log(3 / 2)]))
    (grad,) = torch.autograd.grad(released.sum(), cosine)
    assert torch.equal(grad, torch.zeros_like(grad))
    cosine = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    exact, _ = multi_positive_infonce(cosine / 0.005, positives)
    (grad,) = torch.autograd.grad(exact.sum(), cosine)
    assert (grad != 0).all()
    # By hand, anchor 0 in log space (logits 100, 98, 16): log(1 + e^−2 + e^−84), not log 3.
    assert exact[0].item() == pytest.approx(math.log1p(math.exp(-2) + math.exp(-84)), rel=1e-9)


def test_released_contrast_equals_exact_where_nothing_saturates():
    # τ = 0.4: logits at most 2.5, exponentials at most 12.2, far below the caps.
    gen = torch.Generator().manual_seed(0)
    cosine = (torch.rand(20, 5, generator=gen) * 2 - 1).requires_grad_()
    positives = torch.rand(20, 5, generator=gen) < 0.4
    positives[:, 0] = True
    released, _ = capped_multi_positive_infonce(cosine / 0.4, positives)
    exact, _ = multi_positive_infonce(cosine / 0.4, positives)
    torch.testing.assert_close(released, exact)
    grads = [torch.autograd.grad(loss.sum(), cosine)[0] for loss in (released, exact)]
    torch.testing.assert_close(*grads)


def test_released_contrast_leaves_out_anchors_without_a_positive():
    loss, valid = capped_multi_positive_infonce(
        torch.tensor([[1.0, 2.0], [0.5, 0.1]]), torch.tensor([[False, False], [True, False]])
    )
    assert valid.tolist() == [False, True] and loss.shape == (1,)


def _two_pixels():
    """Pixel 0: logits (0, 0), p = (1/2, 1/2), class 0; pixel 1: logits (0, ln 3),
    p = (1/4, 3/4), class 1."""
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3)]]]])  # [1, 2, 1, 2]
    return logits, torch.tensor([[[0, 1]]])


def test_soft_dice_over_all_classes_or_foreground_by_hand():
    logits, masks = _two_pixels()
    eps = 1e-5
    # Class 1: Σpy = 3/4, Σp = 5/4, Σy = 1. Class 0: Σpy = 1/2, Σp = 3/4, Σy = 1.
    dice_fg = (2 * 0.75 + eps) / (1.25 + 1 + eps)  # 2/3
    dice_bg = (2 * 0.5 + eps) / (0.75 + 1 + eps)  # 4/7
    foreground = soft_dice_loss(logits, masks, classes="foreground")
    every = soft_dice_loss(logits, masks, classes="all")
    assert foreground.item() == pytest.approx(1 - dice_fg, rel=1e-6)  # 1/3
    assert every.item() == pytest.approx(1 - (dice_fg + dice_bg) / 2, rel=1e-6)  # 8/21
    assert soft_dice_loss(logits, masks).item() == every.item()  # the released default
    difference = segmentation_loss(logits, masks, "all") - segmentation_loss(
        logits, masks, "foreground"
    )
    assert difference.item() == pytest.approx(0.5 * (8 / 21 - 1 / 3), rel=1e-4)
    with pytest.raises(ValueError, match="dice_loss_classes must be one of all, foreground"):
        soft_dice_loss(logits, masks, classes="background")
    # A run with another value stops when its config is resolved, before any data is read.
    with pytest.raises(ValueError, match="dice_loss_classes must be one of all, foreground"):
        RunConfig(method="fedavg", dice_loss_classes="background").resolved()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_the_runs_dice_classes(method):
    # The two runs differ only in dice_loss_classes, so their losses on one batch differ by
    # exactly half the difference of the two soft Dice losses of the same logits.
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    masks = (torch.rand(2, 32, 32) > 0.7).long()
    losses = {}
    model = None
    for classes in ("all", "foreground"):
        config = tiny_config(method, dice_loss_classes=classes)
        algorithm = build_algorithm(config)
        model = model or algorithm.build_model()
        copied = copy.deepcopy(model)
        ctx = LocalContext(global_payload={}, state={}, device=torch.device("cpu"))
        algorithm.begin_local(copied, ctx)
        losses[classes] = algorithm.training_loss(copied, images, masks, ctx)
    logits = copy.deepcopy(model)(images)
    expected = 0.5 * (
        soft_dice_loss(logits, masks, "all") - soft_dice_loss(logits, masks, "foreground")
    )
    torch.testing.assert_close(losses["all"] - losses["foreground"], expected)
