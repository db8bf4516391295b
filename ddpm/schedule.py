"""Noise schedules and the forward process.

Time runs over integer steps t = 0..T as in the course: t = 0 is the clean image
(alpha_bar[0] = 1) and t = T is (almost) pure noise. The network is fed t / T.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The seed's schedule: T + 1 betas from beta_start to beta_end (beta[0] is never used)."""
    return torch.linspace(0, 1, T + 1, dtype=torch.float64) * (beta_end - beta_start) + beta_start


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi / 2)."""
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = torch.zeros(T + 1, dtype=torch.float64)
    betas[1:] = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    return betas


class NoiseSchedule:
    """alpha_bar over t = 0..T and the formulas that use it.

    All tensors are float64 on the CPU; results are cast to the dtype and device of the input.
    """

    def __init__(self, T: int = 500, kind: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        if not (isinstance(T, int) and T >= 1):
            raise ValueError(f"T must be a positive integer, got {T!r}")
        self.T, self.kind = T, kind
        self.beta_start, self.beta_end = beta_start, beta_end
        self.betas = linear_betas(T, beta_start, beta_end) if kind == "linear" else cosine_betas(T)
        self.alphas = 1 - self.betas
        # cumulative product in log space (as the seed does) for accuracy; abar[0] = 1 by definition.
        # The product starts at t = 1: the seed also multiplied in 1 - beta[0], so abar_t / abar_{t-1}
        # was not 1 - beta_t at t = 1 (x_1 had the noise of beta_0 + beta_1, not beta_1).
        log_alphas = torch.log(self.alphas)
        log_alphas[0] = 0.0
        self.alpha_bars = torch.cumsum(log_alphas, 0).exp()
        self.alpha_bars[0] = 1.0

    def config(self) -> dict:
        return dict(T=self.T, kind=self.kind, beta_start=self.beta_start, beta_end=self.beta_end)

    def _gather(self, values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped to broadcast over a batch like `like` (B, C, H, W)."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        if (t < 0).any() or (t > self.T).any():
            raise ValueError(f"t must lie in 0..{self.T}")
        v = values[t].to(device=like.device, dtype=like.dtype)
        return v.reshape(-1, *([1] * (like.dim() - 1)))

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """abar_t, shaped to broadcast over a batch like `like`, in its dtype and on its device."""
        return self._gather(self.alpha_bars, t, like)

    # --- the forward process -------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (the seed scaled eps by 1 - abar_t)."""
        abar = self._gather(self.alpha_bars, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    # --- conversions between eps, x0 and x_t ---------------------------------------------
    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        abar = self._gather(self.alpha_bars, t, x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def predict_eps(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        abar = self._gather(self.alpha_bars, t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    # --- per-t quantities for plots ------------------------------------------------------
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar) for t = 0..T (infinite at t = 0)."""
        return self.alpha_bars / (1 - self.alpha_bars)

    def noise_level(self, t: int) -> float:
        """Standard deviation of the noise in x_t, sqrt(1 - abar_t)."""
        return float((1 - self.alpha_bars[t]).sqrt())
