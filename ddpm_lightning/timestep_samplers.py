"""Importance sampling of training timesteps (Nichol & Dhariwal 2021, sec. 3.3, eq. 18).

L_vlb = sum_t L_t is a sum of terms of very different size; drawing t uniformly makes its
gradient noisy. `LossSecondMomentSampler` draws t with p_t proportional to sqrt(E[L_t^2]),
estimated from the last 10 values of each term, and weights each sampled loss by
1 / (T p_t), so the objective's expectation is unchanged. Until every t has 10 values it
samples uniformly (weights 1); a small uniform share (0.001) keeps every p_t > 0.

The history is a pair of buffers, so it is saved in checkpoints and a resumed run continues
with the same distribution. The update reads the losses on the host (one sync per step): the
price of this sampler, paid only with `loss.type=vlb`.
"""

from __future__ import annotations

import torch
from torch import nn


class LossSecondMomentSampler(nn.Module):
    """t ~ p_t proportional to sqrt(mean of the last `history` L_t^2), mixed with `uniform_prob`
    of the uniform distribution."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__()
        if history < 1 or not 0 <= uniform_prob <= 1:
            raise ValueError(f"history must be >= 1 and uniform_prob in [0, 1], got {history!r}, {uniform_prob!r}")
        self.num_timesteps, self.history, self.uniform_prob = num_timesteps, history, uniform_prob
        self.register_buffer("loss_history", torch.zeros(num_timesteps, history, dtype=torch.float64))
        self.register_buffer("loss_counts", torch.zeros(num_timesteps, dtype=torch.long))

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def weights(self) -> torch.Tensor:
        """p_t (T,), float64, summing to 1."""
        T = self.num_timesteps
        if not self.warmed_up():
            return torch.full((T,), 1.0 / T, dtype=torch.float64, device=self.loss_history.device)
        w = self.loss_history.pow(2).mean(-1).sqrt()
        w = w / w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / T

    def draw(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (B,) int64, importance weights 1 / (T p_t) (B,) float32), from the global RNG."""
        p = self.weights()
        t = torch.multinomial(p.cpu(), batch_size, replacement=True)
        weights = 1.0 / (self.num_timesteps * p.cpu()[t])
        return t.to(device), weights.float().to(device)

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each (t, L_t) to t's history, dropping the oldest once it is full (in order,
        so a t drawn twice in a batch shifts twice)."""
        hist, counts = self.loss_history.cpu().numpy().copy(), self.loss_counts.cpu().numpy().copy()
        for ti, li in zip(t.tolist(), losses.double().tolist()):  # on the host: no per-item sync
            c = counts[ti]
            if c == self.history:
                hist[ti, :-1] = hist[ti, 1:]
                hist[ti, -1] = li
            else:
                hist[ti, c] = li
                counts[ti] = c + 1
        self.loss_history.copy_(torch.from_numpy(hist))
        self.loss_counts.copy_(torch.from_numpy(counts))
