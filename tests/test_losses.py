"""semi3d.losses helpers."""
import pytest
import torch
import torch.nn.functional as F

from semi3d.losses import class_argmax, dice_ce_loss, one_hot, soft_dice, soft_dice_loss


def test_class_argmax_is_argmax_with_first_maximum_on_ties():
    g = torch.Generator().manual_seed(0)
    for shape, dim in (((3, 4, 5, 6, 7), 1), ((2, 9, 8, 7), 0), ((2, 2, 5, 5, 5), 1)):
        x = torch.randint(0, 3, shape, generator=g).float()  # many ties
        assert torch.equal(class_argmax(x, dim), x.argmax(dim))
        y = torch.randn(shape, generator=g)
        assert torch.equal(class_argmax(y, dim), y.argmax(dim))
    assert class_argmax(torch.zeros(1, 3, 2)).tolist() == [[0, 0]]


K = 3


def test_soft_dice_known_answers():
    t = one_hot(torch.tensor([[0, 0, 1, 1]]), 2)  # (1, 2, 4)
    assert torch.allclose(soft_dice(t, t, eps=0), torch.ones(2))
    p = torch.full_like(t, 0.5)
    # class 1: 2 * (0.5 + 0.5) / (2 + 2) = 0.5 plain; squared: 2 / (4 * 0.25 + 2) = 2 / 3
    assert soft_dice(p, t, eps=0)[1].item() == pytest.approx(0.5)
    assert soft_dice(p, t, squared=True, eps=0)[1].item() == pytest.approx(2 / 3)
    assert soft_dice_loss(torch.zeros(1, 2, 4), t, squared=False, eps=0).item() == pytest.approx(0.5)


def test_dice_ce_is_ce_plus_foreground_dice():
    logits, label = torch.randn(2, K, 5, 5, 5), torch.randint(0, K, (2, 5, 5, 5))
    dice = soft_dice(torch.softmax(logits, 1), one_hot(label, K))
    expect = F.cross_entropy(logits, label) + 1 - dice[1:].mean()
    assert dice_ce_loss(logits, label).item() == pytest.approx(expect.item(), rel=1e-6)


def test_region_counts_only_its_voxels():
    logits, label = torch.randn(2, K, 8, 8, 8), torch.randint(0, K, (2, 8, 8, 8))
    full = torch.ones(2, 8, 8, 8)
    assert dice_ce_loss(logits, label, region=full).item() == pytest.approx(dice_ce_loss(logits, label).item(), rel=1e-5)
    region = torch.zeros(8, 8, 8)
    region[:4] = 1
    other = label.clone()
    other[:, 4:] = (other[:, 4:] + 1) % K  # outside the region the label does not matter
    assert dice_ce_loss(logits, label, region=region).item() == pytest.approx(
        dice_ce_loss(logits, other, region=region).item())
    ce = F.cross_entropy(logits[:, :, :4], label[:, :4])  # CE: the mean over the region's voxels
    dice = soft_dice(torch.softmax(logits, 1) * region, one_hot(label, K) * region)
    assert dice_ce_loss(logits, label, region=region).item() == pytest.approx((ce + 1 - dice[1:].mean()).item(), rel=1e-5)


def test_class_weights_weigh_both_terms():
    logits, label = torch.randn(2, K, 6, 6, 6), torch.randint(0, K, (2, 6, 6, 6))
    plain = dice_ce_loss(logits, label).item()
    assert dice_ce_loss(logits, label, torch.ones(K)).item() == pytest.approx(plain, rel=1e-5)
    w = torch.tensor([1.0, 2.0, 0.5])
    dice = soft_dice(torch.softmax(logits, 1), one_hot(label, K))
    expect = F.cross_entropy(logits, label, weight=w) + ((1 - dice[1:]) * w[1:]).mean()
    assert dice_ce_loss(logits, label, w).item() == pytest.approx(expect.item(), rel=1e-5)
    g = {}  # weighting a class up makes its errors cost more
    for name, weight in (("plain", None), ("heavy", torch.tensor([1.0, 1.0, 5.0]))):
        x = logits.clone().requires_grad_()
        dice_ce_loss(x, label, weight).backward()
        g[name] = x.grad[:, 2].abs().sum() / x.grad.abs().sum()
    assert g["heavy"] > g["plain"]
    both = dice_ce_loss(logits, label, w, region=torch.ones(6, 6, 6)).item()
    assert both == pytest.approx(dice_ce_loss(logits, label, w).item(), rel=1e-5)
