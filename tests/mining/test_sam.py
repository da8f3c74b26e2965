"""SAM through HF transformers, on a tiny random SamConfig saved to and loaded from a local folder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from semi3d.errors import InputError
from semi3d.mining.base import Prompt
from semi3d.mining.iterative import IterateOptions, refine_iteratively

pytest.importorskip("transformers")
from semi3d.mining.sam import SamSegmenter, load_sam  # noqa: E402

S = 64  # the input size of the tiny model of conftest.py (1024 for the released models)


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory, tiny_sam_config):
    torch.manual_seed(0)
    model = load_sam(config=tiny_sam_config)
    with torch.no_grad():  # the tiny random model's initialiser leaves near-zero weights: give it some signal
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("sam_tiny")
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def sam(sam_dir):
    return SamSegmenter(pretrained=str(sam_dir))


def _image(h=40, w=30, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(1, h, w)).astype(np.float32)
    img[:, 10:25, 8:20] += 3
    return img


def _box_prompt(box=(8.0, 10.0, 19.0, 24.0)):
    return Prompt(box=np.array(box, np.float32), points=np.array([[13.0, 17.0], [2.0, 2.0]], np.float32),
                  labels=np.array([1, 0]))


def test_loads_local_folder_and_segments(sam, sam_dir):
    img = _image()
    seg = SamSegmenter(pretrained=str(sam_dir), multimask_output=True).segment(img, _box_prompt())
    assert seg.masks.shape == (3, 40, 30) and seg.masks.dtype == bool
    assert seg.scores.shape == (3,) and seg.probs.shape == (3, 40, 30)
    np.testing.assert_array_equal(seg.masks, seg.probs > 0.5)
    mask, score, prob = seg.best()
    assert mask.shape == (40, 30) and score == seg.scores.max()
    single = sam.segment(img, _box_prompt())  # default: one mask for a box prompt, 3 for a lone point
    assert single.masks.shape == (1, 40, 30)
    point = Prompt(points=np.array([[13.0, 17.0]], np.float32), labels=np.array([1]))
    assert sam.segment(img, point).masks.shape == (3, 40, 30)


def test_embedding_cache_is_hit(sam, sam_dir, tmp_path):
    img = _image()
    a = sam.segment(img, _box_prompt(), key=("case1", 3))
    b = sam.segment(img, _box_prompt(), key=("case1", 3))
    assert sam.encoder_calls == 1 and sam.cache_hits == 1 and sam.cache_misses == 1
    np.testing.assert_array_equal(a.probs, b.probs)
    sam.segment(img, _box_prompt())  # no key: hashed pixels, a new entry, then a hit
    sam.segment(img.copy(), _box_prompt())
    assert sam.encoder_calls == 2 and sam.cache_hits == 2
    sam.segment(_image(seed=1), _box_prompt())
    assert sam.encoder_calls == 3
    # iterative rounds over the same slice run the encoder once
    before = sam.encoder_calls
    label = np.zeros((40, 30), np.uint8)
    label[10:25, 8:20] = 1
    refine_iteratively(sam, _image(seed=5), label, 2, options=IterateOptions(rounds=3, tol=0), key="slice-x")
    assert sam.encoder_calls == before + 1
    # on-disk cache: a new segmenter reads the saved embedding
    disk = SamSegmenter(pretrained=str(sam_dir), cache_dir=str(tmp_path / "emb"))
    disk.image_embeddings(img, key="k")
    again = SamSegmenter(pretrained=str(sam_dir), cache_dir=str(tmp_path / "emb"))
    again.image_embeddings(img, key="k")
    assert disk.encoder_calls == 1 and again.encoder_calls == 0 and again.cache_hits == 1
    # the same key with other pixels (e.g. another resize) is recomputed, never served stale
    other = _image(seed=2)
    fresh = again.image_embeddings(other, key="k")
    assert again.encoder_calls == 1 and not torch.equal(fresh, again.image_embeddings(img, key="k"))
    third = SamSegmenter(pretrained=str(sam_dir), cache_dir=str(tmp_path / "emb"))
    torch.testing.assert_close(third.image_embeddings(other, key="k"), fresh.half().float())  # stored as fp16
    assert third.encoder_calls == 0


def test_prompt_change_changes_output(sam):
    img = _image()
    base = sam.segment(img, _box_prompt(), key="s")
    moved = sam.segment(img, _box_prompt((0.0, 0.0, 12.0, 14.0)), key="s")
    assert not np.allclose(base.probs, moved.probs)
    flipped = _box_prompt()
    flipped.labels = np.array([0, 1])
    assert not np.allclose(base.probs, sam.segment(img, flipped, key="s").probs)
    with_mask = _box_prompt()
    with_mask.mask = np.zeros((40, 30), np.float32)
    with_mask.mask[10:25, 8:20] = 1
    assert not np.allclose(base.probs, sam.segment(img, with_mask, key="s").probs)
    assert sam.encoder_calls == 1


def test_preprocessing_shapes_and_coordinates(sam):
    img = _image(40, 30)
    pv, (nh, nw) = sam.preprocess(img)
    assert pv.shape == (1, 3, S, S) and (nh, nw) == (64, 48)
    assert torch.all(pv[..., :, 48:] == 0)  # padded right
    np.testing.assert_allclose(sam.map_coords(np.array([[10.0, 20.0]]), (40, 30)), [[16.0, 32.0]])
    assert sam.mask_input(np.ones((40, 30))).shape == (1, 1, 32, 32)
    assert sam.postprocess(torch.zeros(3, 32, 32), (40, 30)).shape == (3, 40, 30)
    # minmax: the slice's 0.5 / 99.5 percentiles map to 0 / 255 (after SAM's normalisation)
    x = sam._to_rgb255(torch.from_numpy(img))
    assert float(x.min()) == 0.0 and float(x.max()) == 255.0


def test_matches_transformers_processor(tiny_sam_config):
    """Our torch preprocessing, coordinate mapping and mask postprocessing equal HF's SamProcessor
    (its PIL backend; the default one needs torchvision)."""
    pil = pytest.importorskip("transformers.models.sam.image_processing_pil_sam")
    from transformers import SamProcessor

    ip = pil.SamImageProcessorPil(size={"longest_edge": S}, pad_size={"height": S, "width": S})
    proc = SamProcessor(image_processor=ip)
    ours = SamSegmenter(load_sam(config=tiny_sam_config), intensity="none")
    rng = np.random.default_rng(0)
    for h, w in [(40, 30), (100, 150)]:
        rgb = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        ref = proc(images=rgb, input_points=[[[[10.0, 20.0]]]], input_boxes=[[[1.0, 2.0, 20.0, 25.0]]],
                   return_tensors="pt")
        pv, size = ours.preprocess(np.moveaxis(rgb, -1, 0).astype(np.float32))
        assert list(size) == ref["reshaped_input_sizes"][0].tolist()
        torch.testing.assert_close(pv, ref["pixel_values"].float(), atol=0.03, rtol=0)  # PIL rounds to uint8
        np.testing.assert_allclose(ours.map_coords(np.array([[10.0, 20.0]]), (h, w)),
                                   ref["input_points"][0, 0].numpy(), rtol=1e-5)
        np.testing.assert_allclose(ours.map_coords(np.array([[1.0, 2.0], [20.0, 25.0]]), (h, w)).reshape(-1),
                                   ref["input_boxes"][0, 0].numpy(), rtol=1e-5)
        low = torch.randn(1, 1, 3, 32, 32)
        post = ip.post_process_masks(low, ref["original_sizes"], ref["reshaped_input_sizes"], binarize=False,
                                     pad_size={"height": S, "width": S})[0][0]
        torch.testing.assert_close(ours.postprocess(low[0, 0], (h, w)), post)


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_sam(pretrained=str(tmp_path / "no_such_folder"))
    with pytest.raises(InputError, match="exactly one"):
        load_sam()
    with pytest.raises(InputError, match="SamConfig"):
        load_sam(config={"vision_config": {"no_such_field_really": 1, "hidden_size": -3}})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="cannot load"):
        load_sam(pretrained=str(empty))
