import pytest
import torch
from torch import nn

from semi3d.models.slicing import predict_2d_volume, slices_to_volume, volume_to_slices


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_round_trip_and_slice_content(axis):
    x = torch.randn(2, 3, 5, 6, 7)
    s = volume_to_slices(x, axis)
    size = x.shape[2 + axis % 3]
    rest = [d for i, d in enumerate(x.shape[2:]) if i != axis % 3]
    assert s.shape == (2 * size, 3, *rest)
    # row n * S + i is slice i of volume n
    assert torch.equal(s[1 * size + 3], x[1].select(1 + axis % 3, 3))
    assert torch.equal(slices_to_volume(s, 2, axis), x)


def test_default_axis_is_z():
    x = torch.randn(1, 1, 4, 5, 6)
    assert volume_to_slices(x).shape == (6, 1, 4, 5)


def test_bad_inputs():
    with pytest.raises(ValueError):
        volume_to_slices(torch.zeros(1, 1, 4, 4), 2)
    with pytest.raises(ValueError):
        volume_to_slices(torch.zeros(1, 1, 4, 4, 4), 3)
    with pytest.raises(ValueError):
        slices_to_volume(torch.zeros(5, 2, 4, 4), 2, 2)


class _RowRamp(nn.Module):
    """A 2D 'net' with a known output: logits (class 0 = 0, class 1 = row index + 10 * input)."""

    def forward(self, x):
        rows = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1).expand(x.shape[0], 1, -1, x.shape[3])
        return torch.cat([torch.zeros_like(rows), rows + 10 * x[:, :1]], 1)


def test_predict_2d_volume_known_function():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 3, 4, 5)
    net = _RowRamp()
    # slicing along Z: the slice rows are X; along X: the slice rows are Y
    ix = torch.arange(3.0).view(1, 1, 3, 1, 1)
    iy = torch.arange(4.0).view(1, 1, 1, 4, 1)
    p_z = predict_2d_volume(net, x, axes=2)
    assert p_z.shape == (2, 2, 3, 4, 5)
    assert torch.allclose(p_z[:, 1:], torch.sigmoid(ix + 10 * x), atol=1e-6)
    assert torch.allclose(p_z.sum(1), torch.ones(2, 3, 4, 5), atol=1e-6)
    p_x = predict_2d_volume(net, x, axes=(0,))
    assert torch.allclose(p_x[:, 1:], torch.sigmoid(iy + 10 * x), atol=1e-6)
    # several views: mean of the per-view probabilities; chunking changes nothing
    p_xz = predict_2d_volume(net, x, axes=(0, 2), chunk=4)
    assert torch.allclose(p_xz, (p_x + p_z) / 2, atol=1e-6)
    assert torch.allclose(predict_2d_volume(net, x, axes=(0, 1, 2), chunk=7),
                          predict_2d_volume(net, x, axes=(0, 1, 2)), atol=1e-6)
