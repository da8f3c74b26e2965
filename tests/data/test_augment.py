import pytest
import torch

from semi3d.data.augment import AugmentConfig, augment
from semi3d.errors import InputError


def _batch(n=4, shape=(16, 16, 16), channels=2):
    g = torch.Generator().manual_seed(1)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    centre = torch.tensor([5.0, 7.0, 9.0])[: len(shape)]
    r = torch.sqrt(sum((x - c) ** 2 for x, c in zip(grids, centre)))
    label = torch.zeros(n, *shape, dtype=torch.long)
    label[:, r < 5] = 1
    label[:, (r < 2.5)] = 2
    image = label[:, None].float().repeat(1, channels, 1, 1, 1) + 0.01 * torch.rand(n, channels, *shape, generator=g)
    return image, label


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _only(**changes):
    """The no-op config with some fields changed."""
    return AugmentConfig(**{**vars(AugmentConfig.none()), **changes})


def test_deterministic_and_seed_dependent():
    image, label = _batch()
    cfg = AugmentConfig(noise_std=0.1, p_noise=0.5, p_brightness=0.5)
    a = augment(image, label, cfg, _gen(3))
    b = augment(image, label, cfg, _gen(3))
    c = augment(image, label, cfg, _gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # resumable: the generator state alone decides the output
    g = _gen(5)
    augment(image, label, cfg, g)
    state = g.get_state()
    d = augment(image, label, cfg, g)
    e = augment(image, label, cfg, torch.Generator().set_state(state))
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


def test_labels_stay_in_set_and_inputs_untouched():
    image, label = _batch()
    image0, label0 = image.clone(), label.clone()
    cfg = AugmentConfig(p_flip=0.5, p_rot90=1.0, p_scale=1.0, p_gamma=1.0, p_contrast=1.0, noise_std=0.1, p_noise=1.0)
    out_img, out_lab = augment(image, label, cfg, _gen(0))
    assert torch.equal(image, image0) and torch.equal(label, label0)
    assert out_img.shape == image.shape and out_lab.shape == label.shape and out_lab.dtype == label.dtype
    assert set(out_lab.unique().tolist()) <= {0, 1, 2}


def test_flips_only_equal_torch_flip():
    image, label = _batch()
    cfg = _only(flip_axes=(0, 2), p_flip=1.0)
    out_img, out_lab = augment(image, label, cfg, _gen(0))
    assert torch.equal(out_img, torch.flip(image, dims=(2, 4)))
    assert torch.equal(out_lab, torch.flip(label, dims=(1, 3)))


def test_noop_config_and_no_label():
    image, label = _batch()
    out_img, out_lab = augment(image, label, AugmentConfig.none(), _gen(0))
    assert torch.equal(out_img, image) and torch.equal(out_lab, label)
    out_img, out_lab = augment(image, None, AugmentConfig.none(), _gen(0))
    assert out_lab is None and torch.equal(out_img, image)


def test_rot90_applied_only_for_equal_sizes():
    image, label = _batch(shape=(12, 16, 10))
    cfg = _only(rot90_axes=((0, 1),), p_rot90=1.0)
    out_img, out_lab = augment(image, label, cfg, _gen(0))
    assert torch.equal(out_img, image) and torch.equal(out_lab, label)

    image, label = _batch(n=8)
    cfg = _only(rot90_axes=((1, 2),), p_rot90=1.0)
    out_img, out_lab = augment(image, label, cfg, _gen(0))
    ks = set()
    for i in range(8):
        k = next(k for k in range(4) if torch.equal(out_img[i], torch.rot90(image[i], k, dims=(2, 3))))
        assert torch.equal(out_lab[i], torch.rot90(label[i], k, dims=(1, 2)))
        ks.add(k)
    assert len(ks) > 1


def test_spatial_alignment_kept():
    image, label = _batch(n=6)
    assert torch.equal(label > 0, image[:, 0] > 0.5)
    cfg = AugmentConfig(p_flip=0.5, p_rot90=0.5, p_scale=1.0, scale_range=(0.8, 1.25), p_gamma=0, p_contrast=0)
    out_img, out_lab = augment(image, label, cfg, _gen(2))
    mismatch = ((out_lab > 0) != (out_img[:, 0] > 0.5)).float().mean().item()
    assert mismatch < 0.02
    assert not torch.equal(out_lab, label)
    # zoom changes the foreground volume by about factor^3 but keeps it inside the patch
    assert (out_lab > 0).any(dim=(1, 2, 3)).all()


def test_intensity_ranges():
    image, _ = _batch()
    image = image * 3 - 1
    lo, hi = image.amin(dim=(2, 3, 4)), image.amax(dim=(2, 3, 4))
    for cfg in (_only(p_gamma=1.0), _only(p_contrast=1.0), _only(p_gamma=1.0, gamma_range=(0.5, 0.5))):
        out, _ = augment(image, None, cfg, _gen(0))
        assert not torch.equal(out, image)
        assert (out.amin(dim=(2, 3, 4)) >= lo - 1e-5).all() and (out.amax(dim=(2, 3, 4)) <= hi + 1e-5).all()
    # nnU-Net gamma: rescale each channel to [0, 1], apply gamma, map back
    out, _ = augment(image, None, _only(p_gamma=1.0, gamma_range=(0.5, 0.5)), _gen(0))
    lo5, hi5 = lo[..., None, None, None], hi[..., None, None, None]
    torch.testing.assert_close(out, ((image - lo5) / (hi5 - lo5)).sqrt() * (hi5 - lo5) + lo5)
    cfg = _only(noise_std=0.2, p_noise=1.0)
    out, _ = augment(image, None, cfg, _gen(0))
    assert (out - image).std().item() == pytest.approx(0.2, rel=0.05)


def test_bad_inputs():
    with pytest.raises(InputError):
        AugmentConfig(p_flip=1.5)
    with pytest.raises(InputError):
        AugmentConfig(rot90_axes=((0, 0),))
    image, label = _batch()
    with pytest.raises(InputError):
        augment(image[0], label, AugmentConfig(), _gen(0))
    with pytest.raises(InputError):
        augment(image, label[:, :8], AugmentConfig(), _gen(0))


@pytest.mark.parametrize("scale", [0.9, 1.1])
def test_zoom_keeps_image_and_label_aligned_at_the_patch_faces(scale):
    """A foreground slab touching the patch faces: where the zoomed image is foreground, so is the
    zoomed label (zooming out used to pad the image with its border and the label with 0)."""
    shape = (16, 16, 16)
    label = torch.zeros(1, *shape, dtype=torch.long)
    label[:, :, 4:12, :] = 1  # spans X and Z entirely: touches four faces
    image = label[:, None].float()
    out_img, out_lab = augment(image, label, _only(p_scale=1.0, scale_range=(scale, scale)), _gen(0))
    img_fg = out_img[:, 0] > 0.5
    agree = (img_fg == (out_lab > 0)).float().mean().item()
    assert agree > 0.98, agree
    # the faces themselves: every border voxel the image calls foreground is labelled foreground
    for axis in (1, 3):
        for idx in (0, shape[axis - 1] - 1):
            f_img = img_fg.select(axis, idx)
            f_lab = out_lab.select(axis, idx) > 0
            assert (f_img & ~f_lab).sum() <= 0.02 * f_img.numel()
