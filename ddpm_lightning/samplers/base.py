"""The sampler interface: choose the number of steps, then step x_t to x_{t_prev}.

A sampler consumes only the parameterization-free `Prediction(x0, eps)`, so every sampler works
with every parameterization. `set_timesteps(n)` picks n of the T training timesteps and
precomputes each step's coefficients in float64 (stored as float32 tensors on the schedule's
device).

Two levels, as in k-diffusion and EDM (whose samplers call the denoiser themselves):

* `sample_step(denoise, x, i)`: step i of the loop. It calls `denoise(x_t, t) -> Prediction`
  as often and at whatever (integer or continuous) times its algorithm needs; the default
  evaluates it once at `timesteps[i]` and hands the result to `step`. A second-order solver
  that needs two evaluations per step (Heun) overrides this;
* `step(x_t, t, pred)`: the update from one prediction, `StepOutput(prev_sample, pred_x0)`,
  as diffusers' `scheduler.step` (and tested step by step against it).

The denoising loop itself lives in one place: `ddpm_lightning.sampling.sample`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess, extract
from ddpm_lightning.samplers.thresholding import clip_x0, dynamic_threshold

SPACINGS = ("leading", "trailing", "linspace")


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor  # x_{t_prev}
    pred_x0: torch.Tensor  # the (clipped / thresholded) x0_hat used for this step


def make_timesteps(num_train_timesteps: int, num_steps: int, spacing: str) -> torch.Tensor:
    """n of the T timesteps in descending order, with diffusers' meanings of the spacings
    (Lin et al. 2023, Table 2):

    * leading:  0, T//n, 2T//n, ...        (DDIM paper; never reaches t = T-1 unless n = T)
    * trailing: round(T - k T/n) - 1        (always starts at t = T-1; Lin et al.'s fix)
    * linspace: round(linspace(0, T-1, n))  (both ends)
    """
    T, n = num_train_timesteps, num_steps
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > T:
        raise ValueError(f"number of sampling steps must be an integer in [1, {T}], got {n!r}")
    # numpy, as diffusers computes them: torch's arange/linspace round exact halves differently
    # (e.g. trailing, n = 48 would give 937 where diffusers gives 936)
    if spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
    return torch.from_numpy(np.sort(ts.astype(np.int64))[::-1].copy())


class Sampler:
    """Base class of the samplers.

    Args:
        process: the forward process (its buffers give the schedule).
        spacing: how n of the T timesteps are chosen (`make_timesteps`).
        clip_denoised: clamp x0_hat to [-clip_range, clip_range] before each step.
        dynamic_threshold: Imagen's percentile (e.g. 0.995) for dynamic thresholding, or None.
        dynamic_threshold_max: an upper bound on Imagen's s (diffusers' `sample_max_value`).
    """

    name = ""

    def __init__(
        self,
        process: DiffusionProcess,
        spacing: str = "trailing",
        clip_denoised: bool = False,
        clip_range: float = 1.0,
        dynamic_threshold: float | None = None,
        dynamic_threshold_max: float | None = None,
    ) -> None:
        if spacing not in SPACINGS:
            raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
        if dynamic_threshold is not None and not 0 < dynamic_threshold <= 1:
            raise ValueError(f"dynamic_threshold is a quantile in (0, 1], got {dynamic_threshold!r}")
        self.process, self.spacing = process, spacing
        # x0_hat clipping / thresholding (`clip`), applied before every step
        self.clip_denoised, self.clip_range = clip_denoised, clip_range
        self.dynamic_threshold, self.dynamic_threshold_max = dynamic_threshold, dynamic_threshold_max
        self.timesteps = torch.empty(0, dtype=torch.long)
        self._index: dict[int, int] = {}

    @property
    def num_train_timesteps(self) -> int:
        return self.process.num_timesteps

    def set_timesteps(self, num_steps: int | None = None) -> torch.Tensor:
        """Choose `num_steps` timesteps (all T when None) and precompute the step coefficients."""
        T = self.num_train_timesteps
        ts = self.choose_timesteps(T if num_steps is None else num_steps)
        self.timesteps = ts
        # -1 after the last step: the data (the loop then pastes an inpainting's known region exactly)
        self.prev_timesteps = torch.cat([ts[1:], ts.new_tensor([-1])])
        self._index = {int(t): i for i, t in enumerate(ts)}
        abar = self.process.alphas_cumprod_f64
        final = abar.new_tensor([self.final_alphas_cumprod()])
        abar_prev = torch.cat([abar[ts[1:]], final])
        device = self.process.betas.device
        self._coefs = {
            k: v.to(device=device, dtype=torch.float32)
            for k, v in self.coefficients(abar[ts], abar_prev).items()
        }
        return ts

    def choose_timesteps(self, num_steps: int) -> torch.Tensor:
        """The n timesteps visited, descending (`make_timesteps` with this sampler's spacing)."""
        return make_timesteps(self.num_train_timesteps, num_steps, self.spacing)

    def final_alphas_cumprod(self) -> float:
        """abar after the last step: 1, the clean data (diffusers' `set_alpha_to_one=True`)."""
        return 1.0

    def coefficients(self, abar_t: torch.Tensor, abar_prev: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-step coefficient tables (float64, shape (n,)) from abar at t and t_prev."""
        raise NotImplementedError

    def prev_timestep(self, t: int) -> int:
        return int(self.prev_timesteps[self._index[int(t)]])

    def coef(self, name: str, t: int) -> torch.Tensor:
        """A 0-d tensor on the schedule's device: no host-device sync in the loop."""
        return self._coefs[name][self._index[int(t)]]

    def denoise(self, x_t: torch.Tensor, t: int, pred: Prediction) -> Prediction:
        """Clip or threshold x0_hat; eps_hat is then re-derived from the clipped x0_hat so the
        pair stays consistent with x_t (as guided-diffusion's DDIM does)."""
        if not (self.clip_denoised or self.dynamic_threshold):
            return pred
        x0 = self.clip(pred.x0)
        tt = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
        return pred._replace(x0=x0, eps=self.process.eps_from_x0(x_t, tt, x0))

    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        """x0_hat thresholded (Imagen) or clamped to [-clip_range, clip_range], as configured."""
        if self.dynamic_threshold:
            return dynamic_threshold(x0, self.dynamic_threshold, self.dynamic_threshold_max)
        return clip_x0(x0, self.clip_range) if self.clip_denoised else x0

    def sample_step(
        self,
        denoise: Callable[[torch.Tensor, torch.Tensor], Prediction],
        x: torch.Tensor,
        i: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> StepOutput:
        """Step i of the loop from x (the state at `timesteps[i]`) to the next level."""
        t = int(self.timesteps[i])
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return self.step(x, t, denoise(x, t_batch), generator=generator)

    def step(
        self,
        x_t: torch.Tensor,
        t: int,
        pred: Prediction,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        n = len(self.timesteps)
        return f"{type(self).__name__}(steps={n or 'unset'}, spacing={self.spacing!r})"


__all__ = ["SPACINGS", "Sampler", "StepOutput", "extract", "make_timesteps"]
