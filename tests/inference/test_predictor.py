import numpy as np
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
