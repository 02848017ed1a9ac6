"""Any diffusers scheduler that works in our x_t space, behind our sampler interface.

The scheduler is built on our schedule (`trained_betas=process.betas`) with
`prediction_type="epsilon"`, and `step` hands it our eps_hat: the parameterization has already
been reduced to `Prediction(x0, eps)`, so every diffusers scheduler works with every
parameterization (and with our clipping and thresholding, applied to x0_hat first).

Two kinds of scheduler fit our loop, whose state is always the variance-preserving x_t of DDPM
eq. 4:

* VP schedulers (DDIM, DPM-Solver, UniPC, ...): the starting noise is N(0, I)
  (`init_noise_sigma == 1`), the network sees x_t itself (`scale_model_input` is the identity)
  and is called once at each of n distinct, integer, descending timesteps;
* the sigma-space (k-diffusion) schedulers in `SIGMA_SPACE` (Euler, Euler ancestral, Heun), whose
  sample is x = x_t sqrt(1 + sigma^2) (Karras et al. 2022, s(t) = 1 / sqrt(1 + sigma^2)):
  `sample_step` converts x_t to the scheduler's sample at the step's sigma, calls the scheduler
  (twice per step for Heun, which `state_in_first_order` tells), and converts back. The network
  is called at t_from_sigma(sigma) of the scheduler's sigma, the continuous time whose noise level
  its input has (for integer timesteps that is the scheduler's own t; diffusers' `linspace`
  interpolates sigma linearly between timesteps, we log sigma). Our x_T ~ N(0, I) is used, not
  `init_noise_sigma` (diffusers scales by sigma_max rather than sqrt(1 + sigma_max^2) for
  `linspace` / `trailing`).

Other sigma-space schedulers (LMS, KDPM2, ...) are refused until tested, as are PNDM (it calls
the network twice at some timesteps) and the inverse schedulers (ascending timesteps). Every
scheduler must keep our abar.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch

from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers.base import Sampler, StepOutput, make_timesteps

# checked end to end against the exact denoiser of Gaussian data (tests/test_dpm_solver.py)
KNOWN_GOOD = (
    "DDIMScheduler",
    "DDIMParallelScheduler",
    "DDPMScheduler",
    "DDPMParallelScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "SASolverScheduler",
    "UniPCMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
)
# the sigma-space schedulers driven through the x_t <-> x = x_t sqrt(1 + sigma^2) conversion
SIGMA_SPACE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler")
# what the adapter sets itself: the schedule comes from the process, the model output is eps
OWNED_KWARGS = ("num_train_timesteps", "trained_betas", "beta_schedule", "beta_start", "beta_end", "prediction_type")
_STEP_OWNED = ("model_output", "timestep", "sample", "generator", "variance_noise", "return_dict")


def _refuse(name: str, why: str) -> ValueError:
    return ValueError(
        f"diffusers scheduler {name} does not fit our sampling loop: {why}. "
        f"Schedulers known to work: {list(KNOWN_GOOD)}"
    )


def _scheduler_class(scheduler) -> type:
    import diffusers

    if isinstance(scheduler, type):
        cls = scheduler
    elif isinstance(scheduler, str):
        cls = getattr(diffusers, scheduler, None) or getattr(diffusers, scheduler + "Scheduler", None)
        if cls is None:
            raise ValueError(f"unknown diffusers scheduler {scheduler!r}; choose one of {list(KNOWN_GOOD)}")
    else:
        cls = type(scheduler)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{scheduler!r} is not a diffusers scheduler; choose one of {list(KNOWN_GOOD)}")
    return cls


class DiffusersSampler(Sampler):
    """A diffusers scheduler driven by our eps_hat.

    Args:
        scheduler: a scheduler class name (`"UniPCMultistepScheduler"`, or without the
            `Scheduler` suffix), a class, or an instance whose config is reused (with our
            schedule and `prediction_type="epsilon"` put in).
        spacing: `timestep_spacing` of the scheduler; None keeps the scheduler's own default
            (`linspace` for the DPM-Solver and UniPC family, `leading` for DDIM and DDPM).
        clip_denoised, dynamic_threshold, ...: see `Sampler`; eps_hat is re-derived from the
            clipped x0_hat before it is handed to the scheduler.
        step_kwargs: extra arguments of the scheduler's `step` (DDIM's `eta`).
        scheduler_kwargs: the scheduler's other options (`solver_order=3`, ...). Static
            clipping inside the scheduler (`clip_sample`) is off unless asked for.
    """

    name = "diffusers"

    def __init__(
        self,
        process: DiffusionProcess,
        scheduler="DPMSolverMultistepScheduler",
        spacing: str | None = None,
        clip_denoised: bool = False,
        clip_range: float = 1.0,
        dynamic_threshold: float | None = None,
        dynamic_threshold_max: float | None = None,
        step_kwargs: dict | None = None,
        **scheduler_kwargs,
    ) -> None:
        super().__init__(
            process,
            spacing=spacing or "trailing",
            clip_denoised=clip_denoised,
            clip_range=clip_range,
            dynamic_threshold=dynamic_threshold,
            dynamic_threshold_max=dynamic_threshold_max,
        )
        owned = sorted(set(scheduler_kwargs) & set(OWNED_KWARGS))
        if owned:
            raise ValueError(
                f"{owned} are set by DiffusersSampler itself (the schedule comes from the process, "
                "the scheduler is always given eps_hat); remove them"
            )
        cls = _scheduler_class(scheduler)
        params = inspect.signature(cls.__init__).parameters
        name = cls.__name__
        if "trained_betas" not in params or "prediction_type" not in params:
            raise _refuse(name, "it does not take a discrete beta schedule and an epsilon prediction")
        options = [k for k, v in params.items() if k not in ("self", *OWNED_KWARGS) and v.kind != v.VAR_KEYWORD]
        unknown = sorted(set(scheduler_kwargs) - set(options))
        if unknown and not any(v.kind == v.VAR_KEYWORD for v in params.values()):
            raise ValueError(f"{name} has no option(s) {unknown}; choose from {options}")

        betas = process.betas.detach().cpu().double()
        kwargs = dict(num_train_timesteps=process.num_timesteps, trained_betas=betas.numpy(), prediction_type="epsilon")
        if spacing is not None:
            if "timestep_spacing" not in params:
                raise ValueError(f"{name} has no timestep_spacing option; leave spacing=None")
            kwargs["timestep_spacing"] = spacing
        from_name = isinstance(scheduler, (str, type))
        if from_name and "clip_sample" in params and "clip_sample" not in scheduler_kwargs:
            kwargs["clip_sample"] = False  # DDIM/DDPM clip x0_hat to [-1, 1] by default; we do not
        if float(betas[-1]) >= 1.0:  # zero terminal SNR: abar_T = 0 needs diffusers' own clamp
            if "rescale_betas_zero_snr" not in params:
                raise _refuse(name, "it has no rescale_betas_zero_snr option for a zero-terminal-SNR schedule")
            kwargs["rescale_betas_zero_snr"] = True  # idempotent on already rescaled betas
        kwargs.update(scheduler_kwargs)
        if from_name:
            self.scheduler = cls(**kwargs)
        else:  # keyword overrides: a merged dict would lose them to the config's `_use_default_values`
            self.scheduler = cls.from_config(scheduler.config, **kwargs)
        if spacing is None:
            self.spacing = self.scheduler.config.get("timestep_spacing", None)
        self._step_params = inspect.signature(self.scheduler.step).parameters
        self.step_kwargs = dict(step_kwargs or {})
        step_options = [k for k in self._step_params if k not in _STEP_OWNED]
        unknown = sorted(set(self.step_kwargs) - set(step_options))
        if unknown:
            raise ValueError(f"{name}.step has no option(s) {unknown}; choose from {step_options}")
        self._sigma_space = name in SIGMA_SPACE
        self._check_compatible(name)
        if name not in KNOWN_GOOD:
            warnings.warn(
                f"{name} passes DiffusersSampler's checks but has not been tested with it; "
                f"tested: {list(KNOWN_GOOD)}",
                stacklevel=2,
            )

    def _check_compatible(self, name: str) -> None:
        s = self.scheduler
        abar = getattr(s, "alphas_cumprod", None)
        if abar is not None and not torch.allclose(
            abar.double(), self.process.alphas_cumprod.detach().cpu().double(), rtol=1e-4, atol=1e-7
        ):
            raise _refuse(name, "it changes the noise schedule (its alphas_cumprod is not the process's)")
        n = min(10, self.num_train_timesteps)
        self.set_timesteps(n)  # refuses duplicate, non-integer or ascending timesteps
        probe = torch.linspace(-2, 2, 7)
        if self._sigma_space:
            # its model input must be our x_t: x / sqrt(1 + sigma^2) at the first sigma
            want = probe / math.sqrt(1 + self._levels[0] ** 2)
            if not torch.allclose(s.scale_model_input(probe.clone(), s.timesteps[0]), want, rtol=1e-5, atol=0):
                raise _refuse(name, "its scale_model_input is not x / sqrt(1 + sigma^2)")
        else:
            if float(s.init_noise_sigma) != 1.0:
                raise _refuse(name, f"it starts from noise of std {float(s.init_noise_sigma):.4g}, not the N(0, I) of x_T")
            if not torch.equal(s.scale_model_input(probe.clone(), s.timesteps[0]), probe):
                raise _refuse(name, "its scale_model_input rescales x_t (a sigma-space scheduler)")
        self.timesteps, self._index = torch.empty(0, dtype=torch.long), {}  # unset until the loop sets it

    def set_timesteps(self, num_steps: int | None = None) -> torch.Tensor:
        """The scheduler's own timesteps for `num_steps` steps (all T when None); resets its state
        (multistep history, step index)."""
        T = self.num_train_timesteps
        n = T if num_steps is None else num_steps
        make_timesteps(T, n, "trailing")  # validates n with the usual message
        self.scheduler.set_timesteps(n)
        if self._sigma_space:
            return self._set_sigma_timesteps()
        raw = self.scheduler.timesteps.detach().cpu()
        ts = raw.round().long()
        name = type(self.scheduler).__name__
        if not torch.equal(ts.to(raw.dtype), raw) or ts.min() < 0 or ts.max() >= T:
            raise _refuse(name, f"its timesteps are not integers in [0, {T})")
        if len(ts) > 1 and not bool((ts[1:] < ts[:-1]).all()):
            raise _refuse(
                name, f"its timesteps for {n} steps are not distinct and descending (our loop calls the "
                "network once per timestep; try fewer steps or another spacing)"
            )
        self.timesteps = ts
        # where the loop pastes the known region (inpainting): the next timestep, as diffusers'
        # inpainting pipelines do, and -1 (the data) after the last step
        self.prev_timesteps = torch.cat([ts[1:], ts.new_tensor([-1])])
        self._index = {int(t): i for i, t in enumerate(ts)}
        return ts

    def _set_sigma_timesteps(self) -> torch.Tensor:
        """Our steps are the scheduler's distinct noise levels (Heun repeats each inner one);
        step i starts at the scheduler's last index holding level i."""
        sig = [float(v) for v in self.scheduler.sigmas]
        levels = [v for j, v in enumerate(sig) if j == 0 or v != sig[j - 1]]
        if levels[-1] != 0 or any(b >= a for a, b in zip(levels, levels[1:])):
            raise _refuse(type(self.scheduler).__name__, "its sigmas do not descend to 0")
        n_calls = len(self.scheduler.timesteps)
        self._levels = levels
        self._entry = [max(j for j, v in enumerate(sig[:n_calls]) if v == level) for level in levels[:-1]]
        device = self.process.betas.device
        ts = self.process.t_from_sigma(torch.tensor(levels[:-1], device=device)).cpu()  # (n,) continuous
        self.timesteps = ts
        self.prev_timesteps = torch.cat([ts[1:], ts.new_tensor([-1.0])])
        self._index = {}
        return ts

    def sample_step(self, denoise, x, i, generator=None) -> StepOutput:
        if not self._sigma_space:
            return super().sample_step(denoise, x, i, generator)
        s = self.scheduler
        if s.step_index is None:  # the first step of a run, which may start midway (img2img)
            s.set_begin_index(self._entry[i])
        k = self._entry[i] if s.step_index is None else s.step_index
        kwargs = dict(self.step_kwargs)
        if generator is not None and "generator" in self._step_params:
            kwargs["generator"] = generator
        sample = x * math.sqrt(1 + self._levels[i] ** 2)  # x_t -> the scheduler's x_0 + sigma eps
        x0 = None
        while k < len(s.timesteps):
            t, sigma = s.timesteps[k], float(s.sigmas[k])
            x_in = s.scale_model_input(sample, t)  # = our x_t at sigma
            t_ours = self.process.t_from_sigma(torch.tensor(sigma, device=x.device)).expand(x.shape[0])
            pred = denoise(x_in, t_ours)
            x0_c = self.clip(pred.x0)
            eps = pred.eps if x0_c is pred.x0 else (sample - x0_c) / sigma  # eps with the clipped x0
            x0 = x0_c if x0 is None else x0
            sample = s.step(eps, t, sample, **kwargs).prev_sample
            k = s.step_index
            if getattr(s, "state_in_first_order", True):  # Heun: done after its second call
                break
        return StepOutput(sample / math.sqrt(1 + self._levels[i + 1] ** 2), x0)

    def step(self, x_t, t, pred: Prediction, generator=None, noise=None) -> StepOutput:
        pred = self.denoise(x_t, t, pred)
        kwargs = dict(self.step_kwargs)
        if generator is not None and "generator" in self._step_params:
            kwargs["generator"] = generator
        if noise is not None:
            if "variance_noise" not in self._step_params:
                raise ValueError(f"{type(self.scheduler).__name__}.step takes no explicit noise; pass a generator")
            kwargs["variance_noise"] = noise
        out = self.scheduler.step(pred.eps, int(t), x_t, **kwargs)
        return StepOutput(out.prev_sample, pred.x0)

    def __repr__(self) -> str:
        n = len(self.timesteps)
        return f"{type(self).__name__}({type(self.scheduler).__name__}, steps={n or 'unset'}, spacing={self.spacing!r})"
