"""Any diffusers scheduler that works in our x_t space, behind our sampler interface.

The scheduler is built on our schedule (`trained_betas=process.betas`) with
`prediction_type="epsilon"`, and `step` hands it our eps_hat: the parameterization has already
been reduced to `Prediction(x0, eps)`, so every diffusers scheduler works with every
parameterization (and with our clipping and thresholding, applied to x0_hat first).

Only schedulers of the variance-preserving x_t of DDPM eq. 4 fit our loop: the starting noise is
N(0, I) (`init_noise_sigma == 1`), the network sees x_t itself (`scale_model_input` is the
identity), the network is called once at each of n distinct, integer, descending timesteps,
and the scheduler keeps our abar. The sigma-space (k-diffusion) schedulers, Euler, Heun, LMS,
KDPM2, ..., scale x_t by sqrt(1 + sigma^2) and are refused, as are PNDM (it calls the network
twice at some timesteps) and the inverse schedulers (ascending timesteps).
"""

from __future__ import annotations

import inspect
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
)
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
        if float(s.init_noise_sigma) != 1.0:
            raise _refuse(name, f"it starts from noise of std {float(s.init_noise_sigma):.4g}, not the N(0, I) of x_T")
        probe = torch.linspace(-2, 2, 7)
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
