"""Loss terms on hand-made tensors, against hand or independent computations."""

import math

import pytest
import torch

from fedbcs_fl.losses import multi_positive_infonce, segmentation_loss, soft_dice_loss


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
