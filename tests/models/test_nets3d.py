"""Behaviour of the 3D networks in semi3d.models.nets3d (tiny inputs, CPU)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from semi3d.errors import InputError
from semi3d.models.nets3d import UNet3D, check_patch, count_parameters, list_nets3d
from semi3d.models.vnet import VNet
from semi3d.registry import NETS3D

SHAPE = (1, 1, 32, 32, 16)  # (N, C, X, Y, Z)
HAS_EINOPS = importlib.util.find_spec("einops") is not None  # MONAI's SwinUNETR needs it

# Small configurations of every registered network, with an input size each accepts.
TINY = {
    "ad_student": ({"width": 2, "depth": 3}, SHAPE),
    "slicewise2d": ({"net2d": {"name": "unetpp2d", "options": {"widths": [4, 8]}}}, SHAPE),
    "unet3d": ({"levels": 4, "base": 4}, SHAPE),
    "vnet": ({"n_filters": 2}, SHAPE),
    "ensemble": ({"members": [{"name": "unet3d", "options": {"levels": 3, "base": 4}},
                              {"name": "slicewise2d", "options": {"net2d": {"name": "unetpp2d",
                                                                            "options": {"widths": [4, 8]}}}}]}, SHAPE),
    "monai_unet": ({"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1}, SHAPE),
    "dynunet": ({"filters": (4, 8, 16, 32, 32)}, SHAPE),
    # group norm: at 32^3 the bottleneck is 1x1x1, where MONAI's default instance norm fails
    "swinunetr": (
        {"feature_size": 12, "depths": (1, 1, 1, 1), "window_size": 4, "norm_name": ("group", {"num_groups": 3})},
        (1, 1, 32, 32, 32),
    ),
}
SLOW_BACKWARD = {"swinunetr"}


def _count_on_meta(build, *args, **kwargs) -> int:
    """Parameter count of a large network, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return count_parameters(build(*args, **kwargs))


def test_registry_lists_all_networks():
    assert set(list_nets3d()) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_shape_and_gradients(name):
    kwargs, shape = TINY[name]
    if name == "swinunetr" and not HAS_EINOPS:
        with pytest.raises(ImportError, match="einops"):
            NETS3D.build(name, in_channels=1, num_classes=3, **kwargs)
        pytest.skip("einops is not installed")
    net = NETS3D.build(name, in_channels=1, num_classes=3, **kwargs)
    assert all(s % d == 0 for s, d in zip(shape[2:], net.divisor))
    x = torch.randn(*shape)
    with torch.set_grad_enabled(name not in SLOW_BACKWARD):
        y = net(x)
    assert y.shape == (x.shape[0], 3, *x.shape[2:])
    assert torch.isfinite(y).all()
    if name in SLOW_BACKWARD:
        return
    y.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize("name", ["unet3d", "vnet", "monai_unet", "dynunet"])
def test_wrong_spatial_size_raises_value_error(name):
    kwargs, _ = TINY[name]
    net = NETS3D.build(name, in_channels=1, num_classes=2, **kwargs).eval()
    with pytest.raises(ValueError, match=r"\(18, 32, 16\)") as e:
        net(torch.zeros(1, 1, 18, 32, 16))
    assert str(tuple(net.divisor)) in str(e.value)
    with pytest.raises(ValueError, match="5D"):
        net(torch.zeros(1, 32, 32, 16))


def test_unknown_option_and_name_raise_input_error():
    for name in list_nets3d():
        with pytest.raises(InputError, match=rf"model {name}.*unknown option 'foo'"):
            NETS3D.build(name, in_channels=1, num_classes=2, foo=1)
    with pytest.raises(InputError, match="unknown 3D network"):
        NETS3D.build("no_such_net", in_channels=1, num_classes=2)
    with pytest.raises(InputError, match="norm"):
        NETS3D.build("unet3d", in_channels=1, num_classes=2, norm="layer")
    with pytest.raises(InputError, match="normalization"):
        NETS3D.build("vnet", in_channels=1, num_classes=2, normalization="bn")
    with pytest.raises(InputError, match="num_classes"):
        NETS3D.build("unet3d", in_channels=1, num_classes=0)


# --------------------------------------------------------------------------------------- unet3d
def test_unet3d_channels_and_parameter_count():
    net = UNet3D(1, 2, levels=5, base=4, max_channels=20)
    assert net.channels == (4, 8, 16, 20, 20)
    assert net.divisor == (16, 16, 16)
    assert net.encoder[-1][1][0].out_channels == 20
    n = count_parameters(net)
    assert count_parameters(UNet3D(1, 2, levels=5, base=4, max_channels=320)) > n
    assert count_parameters(UNet3D(1, 2, levels=4, base=4, max_channels=20)) < n
    assert count_parameters(UNet3D(1, 2, levels=5, base=8, max_channels=20)) > n
    # the M&N configuration (levels=5, base=32, instance norm, capped at 320 channels)
    with torch.device("meta"):
        mn = NETS3D.build("unet3d", in_channels=1, num_classes=2)
    assert mn.channels == (32, 64, 128, 256, 320)
    assert isinstance(mn.encoder[0][0][1], torch.nn.InstanceNorm3d) and mn.encoder[0][0][1].affine
    assert count_parameters(mn) == 16_546_690


@pytest.mark.parametrize("pool", ["conv", "max"])
def test_unet3d_anisotropic_strides(pool):
    net = UNet3D(1, 2, base=4, strides=[(2, 2, 1), (2, 2, 1), (2, 2, 2)], pool=pool)
    assert len(net.channels) == 4
    assert net.divisor == (8, 8, 2)
    y = net(torch.randn(1, 1, 16, 8, 6))
    assert y.shape == (1, 2, 16, 8, 6)
    with pytest.raises(ValueError, match=r"\(16, 8, 5\).*\(8, 8, 2\)"):
        net(torch.randn(1, 1, 16, 8, 5))
    with pytest.raises(InputError, match="strides"):
        UNet3D(1, 2, levels=5, strides=[2, 2])


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_unet3d_norms(norm):
    net = UNet3D(1, 2, levels=3, base=4, norm=norm)
    assert net(torch.randn(2, 1, 8, 8, 8)).shape == (2, 2, 8, 8, 8)


def test_unet3d_dropout_is_stochastic_in_train_only():
    net = UNet3D(1, 2, levels=3, base=2, dropout=0.5)
    x = torch.randn(1, 1, 16, 16, 8)
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    no_drop = UNet3D(1, 2, levels=3, base=2)
    assert torch.equal(no_drop(x), no_drop(x))


def test_unet3d_deep_supervision():
    net = UNet3D(1, 2, levels=4, base=2, strides=[2, (2, 2, 1), 2], deep_supervision=True)
    x = torch.randn(1, 1, 16, 16, 8)
    outs = net(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(1, 2, 16, 16, 8), (1, 2, 8, 8, 4), (1, 2, 4, 4, 4)]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 16, 16, 8)


# ----------------------------------------------------------------------------------------- vnet
def test_vnet_parameter_count_matches_published():
    # The UA-MT/DTC VNet(n_channels=1, n_classes=2, n_filters=16, normalization='batchnorm') has
    # 9,448,866 parameters (the "9.44M" quoted in the LA semi-supervised papers).
    assert _count_on_meta(NETS3D.build, "vnet", in_channels=1, num_classes=2) == 9_448_866
    assert _count_on_meta(VNet, 1, 2, normalization="none") == 9_443_266
    assert VNet.divisor == (16, 16, 16)


def test_vnet_dropout_and_norms():
    x = torch.randn(*SHAPE)  # the bottleneck is 2x2x1: instance norm needs more than one voxel
    net = VNet(1, 2, n_filters=2, normalization="instancenorm", has_dropout=True)
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    plain = VNet(1, 2, n_filters=2, normalization="none")
    assert torch.equal(plain(x), plain(x))
    with torch.device("meta"):
        gn = VNet(1, 2, n_filters=16, normalization="groupnorm")
    assert any(isinstance(m, torch.nn.GroupNorm) for m in gn.modules())
    with pytest.raises(InputError, match="n_filters"):
        VNet(1, 2, n_filters=8, normalization="groupnorm")


def test_check_patch_names_the_patch_and_the_network():
    """A patch the network cannot train on is an InputError naming data.patch_size, before any
    forward: not a multiple of the divisor, or a single voxel left for instance norm at the bottom."""
    check_patch([32, 32, 16], UNet3D(1, 2, levels=4, base=2))  # divisor 8: 4x4x2 at the bottom
    with pytest.raises(InputError, match=r"data.patch_size: \[30, 32, 16\] is not a multiple of the divisor \[8, 8, 8\] of UNet3D"):
        check_patch([30, 32, 16], UNet3D(1, 2, levels=4, base=2))
    with pytest.raises(InputError, match=r"single voxel at the deepest level of VNet.*instance norm"):
        check_patch([16, 16, 16], VNet(1, 2, n_filters=2, normalization="instancenorm"))
    check_patch([16, 16, 16], VNet(1, 2, n_filters=2, normalization="none"))  # no norm: 1x1x1 trains
    check_patch([32, 16, 16], VNet(1, 2, n_filters=2, normalization="instancenorm"))  # 2 voxels
    # the check the trainer makes is real: the refused network does fail on such a patch in training
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        VNet(1, 2, n_filters=2, normalization="instancenorm").train()(torch.zeros(2, 1, 16, 16, 16))
