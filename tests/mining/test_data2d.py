"""2D samples: volume slices and Kvasir-style image folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semi3d.data.case import Case
from semi3d.errors import InputError
from semi3d.mining.data2d import ImageFolderConfig, read_image_folder, stack_slices, volume_slices
from semi3d.models.slicing import volume_to_slices


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_volume_slices_round_trip(axis):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    label = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8)
    case = Case("c1", image, label)
    slices = volume_slices(case, axis)
    ref = volume_to_slices(torch.from_numpy(image)[None], axis).numpy()
    assert len(slices) == ref.shape[0]
    for i, s in enumerate(slices):
        assert s.id == f"c1:{i}" and s.group == "c1" and s.index == i
        np.testing.assert_array_equal(s.image, ref[i])
    np.testing.assert_array_equal(stack_slices([s.label for s in slices], axis), label)
    assert volume_slices(case, axis, with_label=False)[0].label is None


def _write_kvasir(root, n=4, unlabelled=("u0",)):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
        mask = np.zeros((30, 40), np.uint8)
        mask[5:15 + i, 10:25] = 255
        Image.fromarray(img).save(root / "images" / f"im{i}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"im{i}.jpg", quality=95)
    for name in unlabelled:
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
    return root


def test_image_folder(tmp_path):
    root = _write_kvasir(tmp_path / "kvasir")
    samples, ids, with_mask = read_image_folder(ImageFolderConfig(root=root, max_size=None))
    assert ids == ["im0", "im1", "im2", "im3", "u0"] and with_mask == {"im0", "im1", "im2", "im3"}
    s = samples["im2"]
    assert s.image.shape == (3, 30, 40) and s.image.dtype == np.float32
    np.testing.assert_allclose(s.image.mean((1, 2)), 0, atol=1e-4)
    expected = np.zeros((30, 40), np.uint8)
    expected[5:17, 10:25] = 1
    assert (s.label != expected).mean() < 0.01  # JPEG ringing at the edges is thresholded away
    assert samples["u0"].label is None
    small, _, _ = read_image_folder(ImageFolderConfig(root=root, max_size=20))
    assert small["im2"].image.shape == (3, 15, 20) and small["im2"].label.shape == (15, 20)


def test_image_folder_errors(tmp_path):
    from PIL import Image

    with pytest.raises(InputError, match="no such folder"):
        read_image_folder(ImageFolderConfig(root=tmp_path / "nothing"))
    root = _write_kvasir(tmp_path / "k")
    (root / "images" / "im1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="cannot read") as err:
        read_image_folder(ImageFolderConfig(root=root))
    assert err.value.where.endswith("im1.jpg")
    root = _write_kvasir(tmp_path / "k2")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "im0.jpg")
    with pytest.raises(InputError, match="does not match"):
        read_image_folder(ImageFolderConfig(root=root))
    root = _write_kvasir(tmp_path / "k3")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "orphan.png")
    with pytest.raises(InputError, match="no image"):
        read_image_folder(ImageFolderConfig(root=root))
