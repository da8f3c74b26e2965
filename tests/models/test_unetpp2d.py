"""U-Net++ 2D: shapes, nested wiring, padding, deep supervision, options."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semi3d.errors import InputError
from semi3d.models.unetpp2d import UNetPlusPlus2D
from semi3d.registry import NETS2D

SMALL = (4, 8, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_and_shapes_with_gradients():
    assert "unetpp2d" in NETS2D.names()
    net = NETS2D.build("unetpp2d", in_channels=2, num_classes=3, widths=SMALL)
    assert isinstance(net, UNetPlusPlus2D)
    y = net(torch.randn(2, 2, 32, 24))
    assert y.shape == (2, 3, 32, 24)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_nested_dense_skip_pathways():
    """X[i][j] (j >= 1) takes j skips of widths[i] channels plus the upsampled X[i+1][j-1]."""
    w = (4, 8, 16, 32)
    net = UNetPlusPlus2D(1, 2, widths=w)
    assert [len(row) for row in net.nodes] == [4, 3, 2, 1]
    for i, row in enumerate(net.nodes):
        for j, block in enumerate(row):
            cin = (1 if i == 0 else w[i - 1]) if j == 0 else j * w[i] + w[i + 1]
            assert block[0].in_channels == cin and block[0].out_channels == w[i], (i, j)
    assert net.size_multiple == 8


def test_any_size_is_padded_and_cropped():
    net = NETS2D.build("unetpp2d", in_channels=1, num_classes=2, widths=SMALL).eval()
    x = torch.randn(1, 1, 13, 10)
    with torch.no_grad():
        y = net(x)
        ref = net(F.pad(x, (1, 1, 1, 2)))[..., 1:14, 1:11]  # 13 x 10 -> 16 x 12, centred
    assert y.shape == (1, 2, 13, 10)
    torch.testing.assert_close(y, ref)


def test_deep_supervision_heads_and_mean():
    net = NETS2D.build("unetpp2d", in_channels=1, num_classes=2, widths=SMALL, deep_supervision=True,
                       norm="instance", upsample="nearest").eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        heads = net.forward_heads(x)
        assert len(heads) == len(SMALL) - 1 and all(h.shape == (1, 2, 16, 16) for h in heads)
        torch.testing.assert_close(net(x), torch.stack(heads).mean(0))
    plain = NETS2D.build("unetpp2d", in_channels=1, num_classes=2, widths=SMALL)
    assert len(plain.forward_heads(torch.randn(1, 1, 16, 16))) == 1


def test_can_learn_a_tiny_task():
    torch.manual_seed(0)
    net = NETS2D.build("unetpp2d", in_channels=1, num_classes=2, widths=(4, 8), norm="group")
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 2:6, 2:6] = 1.0
    target = (x[:, 0] > 0.5).long()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(80):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
    assert (net(x).argmax(1) == target).float().mean() > 0.95


@pytest.mark.parametrize("options, key", [
    ({"dropout": 0.1}, "dropout"), ({"widths": (8,)}, "widths"), ({"widths": (8, 0)}, "widths"),
    ({"widths": "8,16"}, "widths"), ({"norm": "layer"}, "norm"), ({"upsample": "cubic"}, "upsample"),
    ({"deep_supervision": "yes"}, "deep_supervision"),
])
def test_bad_options_are_input_errors(options, key):
    with pytest.raises(InputError, match=key) as err:
        NETS2D.build("unetpp2d", in_channels=1, num_classes=2, **options)
    assert err.value.where == "unetpp2d"


def test_bad_input_shape():
    net = NETS2D.build("unetpp2d", in_channels=1, num_classes=2, widths=SMALL)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.randn(1, 3, 16, 16))
