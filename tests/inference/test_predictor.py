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
