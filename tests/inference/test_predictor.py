import numpy as np
import pytest
import torch

from semi3d.config import InferenceConfig
from semi3d.inference.predictor import predict_probs


class Ident(torch.nn.Module):
    """Logits = a fixed function of the input, so the sliding window result is known."""

    def forward(self, x):
        return torch.cat([-x, x], 1) * 10


def test_sliding_window_equals_whole_volume():
    x = torch.randn(1, 37, 29, 21)
    probs = predict_probs(Ident(), x, (16, 16, 16), InferenceConfig(overlap=0.5), torch.device("cpu"))
    ref = torch.softmax(Ident()(x[None]), 1)[0]
    assert probs.shape == (2, 37, 29, 21)
    assert torch.allclose(probs, ref, atol=1e-5)


def test_volume_smaller_than_window():
    x = torch.randn(1, 10, 12, 8)
    probs = predict_probs(Ident(), x, (16, 16, 16), InferenceConfig(), torch.device("cpu"))
    assert probs.shape == (2, 10, 12, 8)
    assert np.allclose(probs.sum(0).numpy(), 1, atol=1e-5)


class Recorder(torch.nn.Module):
    """Identity-like logits; keeps every window it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.cat([-x, x], 1)


def test_inference_pads_a_small_volume_as_training_does():
    """One padding rule: the window the network sees at inference is the padded volume the patch
    sampler trains on (a z-scored image's padding used to be 0 at inference, its minimum in training)."""
    from semi3d.data.case import Case
    from semi3d.data.patches import PatchSampler

    img = (torch.rand(1, 12, 16, 10) * 3 + 1).numpy()  # min ~1: padding with 0 would differ
    patch = (16, 16, 16)
    sampler = PatchSampler([Case("c", img, None)], patch, 0.0, torch.Generator().manual_seed(0))
    net = Recorder()
    probs = predict_probs(net, torch.from_numpy(img), patch, InferenceConfig(), torch.device("cpu"))
    assert probs.shape == (2, 12, 16, 10)
    assert len(net.seen) == 1 and net.seen[0].shape == (1, 1, 16, 16, 16)
    assert torch.equal(net.seen[0][0], sampler.vols[0].image)


class Skewed(torch.nn.Module):
    """Logits that depend on the position along X, so a flip changes them (known answer)."""

    def forward(self, x):
        ramp = torch.linspace(0, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        return torch.cat([-x - ramp, x + ramp], 1)


def test_mirror_tta_averages_the_flipped_logits():
    x = torch.randn(1, 16, 16, 16)
    plain = predict_probs(Skewed(), x, (16, 16, 16), InferenceConfig(), torch.device("cpu"))
    tta = predict_probs(Skewed(), x, (16, 16, 16), InferenceConfig(mirror_axes=[0, 2]), torch.device("cpu"))
    ramp = torch.linspace(0, 1, 16).view(1, -1, 1, 1)
    mean_ramp = (ramp + ramp.flip(1)) / 2  # flips along Z leave the ramp alone; along X they reverse it
    expect = torch.softmax(torch.cat([-x - mean_ramp, x + mean_ramp]), 0)
    assert torch.allclose(tta, expect, atol=1e-5) and not torch.allclose(plain, expect, atol=1e-3)
    # a flip-equivariant network is unchanged by TTA
    same = predict_probs(Ident(), x, (16, 16, 16), InferenceConfig(mirror_axes=[0, 1, 2]), torch.device("cpu"))
    assert torch.allclose(same, predict_probs(Ident(), x, (16, 16, 16), InferenceConfig(), torch.device("cpu")), atol=1e-5)


def test_mirror_axes_are_validated():
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        InferenceConfig(mirror_axes=[0, 0])
    with pytest.raises(pydantic.ValidationError):
        InferenceConfig(mirror_axes=[3])


@pytest.mark.parametrize("classes", [[], [1, 1], [0, 1]])
def test_largest_component_classes_are_validated(classes):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="distinct foreground classes"):
        InferenceConfig(largest_component_classes=classes)
    assert InferenceConfig(largest_component_classes=[2, 1]).largest_component_classes == [2, 1]
