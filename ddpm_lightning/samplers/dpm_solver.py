"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", arXiv:2211.01095): the multistep solver of the diffusion ODE written for
the data prediction x0_hat, orders 1 and 2 ("DPM-Solver++(2M)", their Algorithm 2).

Notation of the paper, with abar from our process: alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) (half the log-SNR) and
h_i = lambda_{t_i} - lambda_{t_{i-1}} > 0 the step in lambda (the paper's t_{i-1} is our t,
its t_i our t_prev). The exact solution of the ODE with the data prediction (their
Proposition 4.1) is

    x_{t_prev} = sigma_prev / sigma_t x_t + sigma_prev * int_{lambda_t}^{lambda_prev} e^lambda x0_hat dlambda,

and the solvers approximate x0_hat in the integral by a polynomial in lambda: a constant
(first order, which is DDIM with eta = 0) or the line through the last two x0_hat (2M).

With `sigmas="karras"` (or `"exponential"`) the solver steps between the noise levels of
`ddpm_lightning.samplers.sigmas.make_sigmas` instead of DDPM timesteps ("DPM++ 2M Karras", as
diffusers' `use_karras_sigmas=True`): abar = 1 / (1 + sigma^2) at each level, the network is
called at the continuous timestep t_from_sigma(sigma), and the update is the same (it is
invariant to the VP / VE view: x_t = x / sqrt(1 + sigma^2)). diffusers rounds those timesteps
to integers before calling the network (its conversions still use the unrounded sigma); we do
not, so the network sees the t whose noise level the input has.
"""

from __future__ import annotations

import numpy as np
import torch

from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers.base import Sampler, StepOutput, make_timesteps
from ddpm_lightning.samplers.sigmas import check_sigma_options, make_sigmas

SOLVER_ORDERS = (1, 2)
FINAL_SIGMAS = ("zero", "sigma_min")


def dpm_solver_timesteps(num_train_timesteps: int, num_steps: int, spacing: str) -> torch.Tensor:
    """The timesteps of diffusers' `DPMSolverMultistepScheduler` (descending), computed with the
    same numpy expressions so that they agree for every n (rounding at exact halves included).

    The last step goes to sigma = 0 rather than to t = 0, so `linspace` and `leading` place
    n + 1 points and drop t = 0 (no step is spent going from t = 0 to the data); `trailing` is
    Lin et al.'s round(T - k T/n) - 1. With n = T every spacing gives all T timesteps.
    """
    T, n = num_train_timesteps, num_steps
    make_timesteps(T, n, spacing)  # validates n and the spacing, with the usual messages
    if n == T:
        ts = np.arange(T - 1, -1, -1)
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1]
    else:  # trailing
        ts = np.arange(T, 0, -T / n).round() - 1
    return torch.from_numpy(ts.astype(np.int64).copy())


class DPMSolverSampler(Sampler):
    """Multistep DPM-Solver++ with the data prediction x0_hat (deterministic, one network call
    per step).

    The first step is first order (no history yet); later steps are second order with
    `solver_order=2`. The last step is first order when it goes to sigma = 0
    (`final_sigma="zero"`, where lambda is infinite and the second-order correction undefined),
    and also, with `lower_order_final`, when there are fewer than 15 steps, as in diffusers.

    Args:
        solver_order: 1 (DPM-Solver++(1), i.e. DDIM) or 2 (DPM-Solver++(2M)).
        lower_order_final: first order at the last step when there are fewer than 15 steps
            (diffusers' default; it matters only with `final_sigma="sigma_min"`, since the
            step to sigma = 0 is always first order).
        final_sigma: where the last step goes: `zero` (the clean sample, abar = 1; diffusers'
            `final_sigmas_type="zero"`) or `sigma_min` (the noise level of t = 0, which is
            then returned as the sample).
        spacing: as in `Sampler`, with diffusers' DPM-Solver meanings
            (`dpm_solver_timesteps`); `trailing` (the default) starts at t = T - 1.
        sigmas: None (or `schedule`): the DDPM timesteps above; `karras` (eq. 5 of Karras et al.
            2022, with `rho`) or `exponential`: those noise levels between `sigma_min` and
            `sigma_max` (default: the trained schedule's range), final sigma 0.
        clip_denoised, dynamic_threshold, ...: see `Sampler`; applied to x0_hat before it is
            used and stored, as diffusers' `thresholding` does.
    """

    name = "dpmpp_2m"

    def __init__(
        self,
        process: DiffusionProcess,
        solver_order: int = 2,
        lower_order_final: bool = True,
        final_sigma: str = "zero",
        spacing: str = "trailing",
        sigmas: str | None = None,
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        **kwargs,
    ) -> None:
        if solver_order not in SOLVER_ORDERS:
            raise ValueError(f"unknown DPM-Solver++ solver_order {solver_order!r}; choose one of {list(SOLVER_ORDERS)}")
        if final_sigma not in FINAL_SIGMAS:
            raise ValueError(f"unknown DPM-Solver++ final_sigma {final_sigma!r}; choose one of {list(FINAL_SIGMAS)}")
        super().__init__(process, spacing=spacing, **kwargs)
        check_sigma_options(process, sigmas or "schedule", rho, sigma_min, sigma_max)
        self.sigmas = None if sigmas in (None, "schedule") else sigmas
        if self.sigmas is not None and final_sigma != "zero":
            raise ValueError(f"final_sigma={final_sigma!r} is for the DDPM timesteps (sigmas=null); sigmas={sigmas!r} ends at 0")
        self.rho, self.sigma_min, self.sigma_max = float(rho), sigma_min, sigma_max
        self.solver_order = int(solver_order)
        self.lower_order_final = bool(lower_order_final)
        self.final_sigma = final_sigma
        self._history: tuple[int, torch.Tensor] | None = None  # (step index, x0_hat) of the last step

    def set_timesteps(self, num_steps: int | None = None) -> torch.Tensor:
        """As `Sampler.set_timesteps`, with diffusers' DPM-Solver timesteps and final sigma; also
        forgets the x0_hat history."""
        self._history = None
        if self.sigmas is None:
            return super().set_timesteps(num_steps)
        n = self.num_train_timesteps if num_steps is None else num_steps
        sig = make_sigmas(self.process, n, self.sigmas, self.rho, self.sigma_min, self.sigma_max)  # (n + 1,) f64
        abar = 1 / (1 + sig**2)  # 1 at the final sigma = 0
        device = self.process.betas.device
        ts = self.process.t_from_sigma(sig[:-1].float().to(device)).cpu()  # (n,) continuous timesteps
        self.timesteps = ts
        self.prev_timesteps = torch.cat([ts[1:], ts.new_tensor([-1.0])])
        self._index = {}
        self._coefs = {
            k: v.to(device=device, dtype=torch.float32) for k, v in self.coefficients(abar[:-1], abar[1:]).items()
        }
        return ts

    def choose_timesteps(self, num_steps: int) -> torch.Tensor:
        return dpm_solver_timesteps(self.num_train_timesteps, num_steps, self.spacing)

    def final_alphas_cumprod(self) -> float:
        return 1.0 if self.final_sigma == "zero" else float(self.process.alphas_cumprod_f64[0])

    def coefficients(self, abar_t, abar_prev):
        alpha_t, sigma_t = abar_t.sqrt(), (1 - abar_t).sqrt()
        alpha_p, sigma_p = abar_prev.sqrt(), (1 - abar_prev).sqrt()
        lam_t = 0.5 * (abar_t.log() - torch.log1p(-abar_t))  # lambda = log(alpha / sigma)
        lam_p = 0.5 * (abar_prev.log() - torch.log1p(-abar_prev))  # +inf where abar_prev = 1
        h = lam_p - lam_t
        h_last = torch.cat([h.new_zeros(1), h[:-1]])  # h_{i-1}: the previous step, 0 at the first
        # 1. first-order update (DPM-Solver++(1), sec. 4.1 of Lu et al. 2022):
        #    x_prev = sigma_prev / sigma_t x_t - alpha_prev (e^{-h} - 1) x0_hat. With
        #    e^{-h} = alpha_t sigma_prev / (sigma_t alpha_prev) the x0_hat weight is
        #    alpha_prev - alpha_t sigma_prev / sigma_t, finite at sigma_prev = 0 (it is then 1).
        c_x0 = alpha_p - alpha_t * sigma_p / sigma_t
        # 2. second-order multistep correction, Algorithm 2 (DPM-Solver++(2M)) of Lu et al. 2022:
        #    D = (1 + 1 / (2 r)) x0_i - 1 / (2 r) x0_{i-1} with r = h_{i-1} / h_i, i.e.
        #    x_prev = (first order) + c_x0 / (2 r) (x0_i - x0_{i-1}). Undefined (0 here) at the first
        #    step and where h is infinite; `step` takes first order there.
        ok = torch.isfinite(h) & (h_last > 0)
        c_d1 = torch.where(ok, 0.5 * c_x0 * h / torch.where(ok, h_last, 1.0), 0.0)
        return {"xt": sigma_p / sigma_t, "x0": c_x0, "d1": c_d1}

    def _use_second_order(self, i: int) -> bool:
        if self.solver_order < 2 or i == 0 or self._history is None:
            return False
        if self._history[0] != i - 1:  # not the step just before this one (img2img's first step)
            return False
        if i == len(self.timesteps) - 1:
            # diffusers' lower_order_final: the step to sigma = 0 always, others under 15 steps
            if self.final_sigma == "zero" or (self.lower_order_final and len(self.timesteps) < 15):
                return False
        return True

    def sample_step(self, denoise, x, i, generator=None) -> StepOutput:
        if self.sigmas is None:
            return super().sample_step(denoise, x, i, generator)
        t = self.timesteps[i].to(x.device).expand(x.shape[0])  # continuous time of sigma_i
        return self._update(x, i, self.clip(denoise(x, t).x0))  # only x0_hat enters the update

    def step(self, x_t, t, pred: Prediction, generator=None, noise=None) -> StepOutput:
        pred = self.denoise(x_t, t, pred)
        return self._update(x_t, self._index[int(t)], pred.x0)

    def _update(self, x_t: torch.Tensor, i: int, x0: torch.Tensor) -> StepOutput:
        c = {k: v[i] for k, v in self._coefs.items()}
        # 3. x_{t_prev} = sigma_prev / sigma_t x_t + c_x0 x0_i  [+ c_x0 / (2 r) (x0_i - x0_{i-1})]
        x_prev = c["xt"] * x_t + c["x0"] * x0
        if self._use_second_order(i):
            x_prev = x_prev + c["d1"] * (x0 - self._history[1])
        self._history = (i, x0)
        return StepOutput(x_prev, x0)

    def __repr__(self) -> str:
        n = len(self.timesteps)
        return (
            f"{type(self).__name__}(order={self.solver_order}, steps={n or 'unset'}, "
            f"spacing={self.spacing!r}, final_sigma={self.final_sigma!r}, sigmas={self.sigmas!r})"
        )
