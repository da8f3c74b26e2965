"""The Gaussian diffusion A&D's diffusion decoder learns (guided-diffusion's linear schedule,
``x_0`` prediction, deterministic DDIM sampling), used by :mod:`semi3d.methods.ad`."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps of ``0 .. num_timesteps - 1`` (guided-diffusion's
    ``space_timesteps(T, [count])``: ``round(i * (T - 1) / (count - 1))``), ascending."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot take {count} steps out of {num_timesteps}")
    if count == 1:
        return [0]
    stride = (num_timesteps - 1) / (count - 1)
    return [round(i * stride) for i in range(count)]


class GaussianDiffusion(nn.Module):
    """Linear beta schedule (``beta_start .. beta_end`` scaled by ``1000 / steps``, as
    guided-diffusion's ``get_named_beta_schedule("linear")``), ``x_0``-predicting model, and
    deterministic DDIM sampling over ``sample_steps`` spaced steps.

    Holds no state worth saving: the schedule buffers are not part of ``state_dict``."""

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, sample_steps: int = 10):
        super().__init__()
        scale = 1000.0 / steps
        betas = torch.linspace(scale * beta_start, scale * beta_end, steps, dtype=torch.float64)
        abar = torch.cumprod(1.0 - betas, 0)
        self.steps = steps
        self.sample_timesteps = space_timesteps(steps, sample_steps)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)

    def sample_t(self, n: int, device: torch.device) -> torch.Tensor:
        """``n`` steps drawn uniformly from ``0 .. steps - 1`` (guided-diffusion's UniformSampler)."""
        return torch.randint(0, self.steps, (n,), device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``, per sample."""
        a = self.alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    @torch.no_grad()
    def ddim_sample(self, predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    shape: tuple[int, ...], device: torch.device,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """DDIM (eta 0) from ``x_T ~ N(0, I)`` over ``sample_timesteps`` (descending).

        At each step ``x_0 = clamp(predict_x0(x_t, t), -1, 1)``, ``eps = (x_t - sqrt(abar_t) x_0) /
        sqrt(1 - abar_t)`` and ``x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev) eps``
        (``abar_prev`` of the previous spaced step, 1 after the last). Returns the last ``x_0``
        prediction, float32 (what A&D uses as the diffusion pseudo-label). ``x_T`` is drawn from
        ``generator`` (on ``device``) when given, else from the global RNG.
        """
        abar = self.alphas_cumprod.to(device)
        ts = self.sample_timesteps
        x = torch.randn(shape, device=device, generator=generator)
        x0 = x
        for i in reversed(range(len(ts))):
            t = torch.full((shape[0],), ts[i], device=device, dtype=torch.long)
            x0 = predict_x0(x, t).float().clamp(-1, 1)
            a, a_prev = abar[ts[i]], (abar[ts[i - 1]] if i > 0 else abar.new_tensor(1.0))
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return x0
