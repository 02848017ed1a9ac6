"""`DiffusionModule`: the LightningModule that owns the diffusion loss and sampling.

It holds the research code only: the forward process (buffers), the parameterization, the loss
and the sampling entry point. Everything else (EMA, sample grids, FID, checkpoints) lives in
callbacks. Subclass it and override one method to change one thing:

* `draw_timesteps(batch_size)`: how training timesteps are drawn (uniform by default);
* `loss_per_sample(x0)`: the per-sample training loss;
* `configure_optimizers()`: as in any LightningModule.

Sub-components can be given as objects (plain-Python use) or as config dicts with a `_target_`
(the Hydra path). Config dicts are stored in the checkpoint's hyperparameters, so
`DiffusionModule.load_from_checkpoint(path)` alone rebuilds the network; a network given as an
object must be passed again: `load_from_checkpoint(path, network=net)`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric

from ddpm_lightning.conditioning import Conditioning, build_conditioning
from ddpm_lightning.distributed import seed_rank
from ddpm_lightning.errors import user_errors
from ddpm_lightning.denoiser import Cond, Denoiser
from ddpm_lightning.losses import DiffusionLoss
from ddpm_lightning.module_loading import SafeLoading
from ddpm_lightning.networks.build import check_network, fill_shape_keys
from ddpm_lightning.noise import noise_loader  # noqa: F401  (importable from here as before)
from ddpm_lightning.parameterizations import Parameterization
from ddpm_lightning.process import DiffusionProcess, randn
from ddpm_lightning.samplers import Sampler, get_sampler
from ddpm_lightning.samplers.presets import sampler_preset
from ddpm_lightning.sampling import SampleOutput, denoising_loop
from ddpm_lightning.timestep_samplers import LossSecondMomentSampler
from ddpm_lightning.variance import output_channels_factor

NUM_QUARTILES = 4  # val/loss_q0..q3: loss by timestep quartile, as improved-diffusion logs it


def _plain(x: Any) -> Any:
    """DictConfig -> plain containers (checkpoint hyperparameters must not need OmegaConf)."""
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


def _build(spec: Any, **kwargs: Any) -> Any:
    """Instantiate a `_target_` config dict; return anything else unchanged."""
    if isinstance(spec, Mapping) and "_target_" in spec:
        with user_errors():
            return instantiate(dict(spec), **kwargs)
    return spec


class DiffusionModule(SafeLoading, L.LightningModule):
    """A denoising diffusion model: network + forward process + parameterization + loss.

    Args:
        network: an `nn.Module` with the contract network(x_t, t, cond=None) -> output of x_t's
            shape (see `ddpm_lightning.denoiser`), or its config dict (`_target_` and arguments).
        schedule: a `DiffusionProcess`, or its arguments as a dict
            (`{"name": "cosine", "num_timesteps": 1000}`); default linear, T = 1000.
        parameterization: "epsilon", "x0", "mu" or "v".
        loss: a `DiffusionLoss` or its options as a dict (`{"type": "mse", "weighting":
            "min_snr", "min_snr_gamma": 5.0, "huber_delta": 1.0}`); default plain MSE.
        loss_type, loss_weighting, min_snr_gamma: the loss options as separate arguments (the
            spelling of checkpoints written before the `loss` group); they fill `loss`.
        sampler: the default sampler for `sample()` and validation pictures:
            `{"name": "ddim", "num_steps": 50, "eta": 0.0, ...}` or a name.
        optimizer: a partial optimizer (`functools.partial(torch.optim.AdamW, lr=2e-4)`) or its
            config dict with `_partial_: true`; default AdamW(lr=2e-4), Ho et al. 2020.
        lr_scheduler: a partial taking the optimizer (e.g. `ddpm_lightning.lr_schedules.warmup`),
            or its config dict; stepped every optimizer step.
        data_shape: the shape of one example, (C, H, W) or (D,); needed to sample without
            data (taken from the datamodule at fit time when not given).
        compile: `torch.compile` the network in place at fit time.
        channels_last: keep images in channels-last memory format (faster convolutions on GPUs
            with tensor cores).
        variance: "fixed", "learned" or "learned_range" (Nichol & Dhariwal 2021: the network
            outputs 2C channels, `ddpm_lightning.variance`); a learned one trains with
            `loss.type=hybrid` or `vlb`.
        conditioning: what the model is conditioned on: a `Conditioning` or its spec
            (`{"type": "class", "num_classes": 10, "p_uncond": 0.1}`); None: unconditional
            (`ddpm_lightning.conditioning`).
    """

    def __init__(
        self,
        network: nn.Module | Mapping[str, Any],
        schedule: DiffusionProcess | Mapping[str, Any] | None = None,
        parameterization: str | Parameterization = "epsilon",
        loss: DiffusionLoss | Mapping[str, Any] | None = None,
        sampler: str | Mapping[str, Any] | None = None,
        optimizer: Callable | Mapping[str, Any] | None = None,
        lr_scheduler: Callable | Mapping[str, Any] | None = None,
        data_shape: Sequence[int] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        variance: str = "fixed",
        conditioning: Conditioning | Mapping[str, Any] | None = None,
        loss_type: str | None = None,
        loss_weighting: str | None = None,
        min_snr_gamma: float | None = None,
    ) -> None:
        super().__init__()
        network, schedule, sampler = _plain(network), _plain(schedule), _plain(sampler)
        optimizer, lr_scheduler = _plain(optimizer), _plain(lr_scheduler)
        legacy = {"type": loss_type, "weighting": loss_weighting, "min_snr_gamma": min_snr_gamma}
        loss_fn = DiffusionLoss.from_spec(_plain(loss), **{k: v for k, v in legacy.items() if v is not None})
        factor = output_channels_factor(variance)
        if isinstance(parameterization, Parameterization):
            parameterization = parameterization.name
        loss_fn.check(variance, data_shape, parameterization)
        cond = build_conditioning(_plain(conditioning))
        if isinstance(network, Mapping) and data_shape is not None:
            # null channels / sizes from the data, class-embedding rows from the conditioning
            network = fill_shape_keys(network, data_shape, factor, cond.network_keys())

        if isinstance(schedule, DiffusionProcess):
            process = schedule
        else:
            process = DiffusionProcess(**(schedule or {"name": "linear", "num_timesteps": 1000}))
        # Objects are not hyperparameters: store what rebuilds them (config dicts), or nothing.
        hparams = {
            "schedule": dict(process.config),
            "parameterization": parameterization,
            "loss": loss_fn.spec(),
            "sampler": sampler if sampler is not None else {"name": "ddpm"},
            "data_shape": list(data_shape) if data_shape is not None else None,
            "compile": compile,
            "channels_last": channels_last,
            "variance": variance,
        }
        if cond.spec() is not None:  # unconditional models keep the hyperparameters they had
            hparams["conditioning"] = cond.spec()
        for name, value in {"network": network, "optimizer": optimizer, "lr_scheduler": lr_scheduler}.items():
            if isinstance(value, Mapping):
                hparams[name] = value
        self.save_hyperparameters(hparams)

        self.network: nn.Module = _build(network)
        if data_shape is not None and isinstance(self.network, nn.Module):
            check_network(self.network, data_shape, factor, cond.example(2, tuple(data_shape)))
        self.process = process
        self.conditioning = cond
        self.loss_fn = loss_fn
        # L_vlb alone: timesteps importance-sampled by their loss history (Nichol & Dhariwal sec. 3.3)
        self.timestep_sampler = LossSecondMomentSampler(process.num_timesteps) if loss_fn.type == "vlb" else None
        # The denoiser shares the network and the process (its submodules are these same
        # objects), but it is not registered as a submodule of this module: the state_dict keys
        # stay `network.*` / `process.*`, so checkpoints keep one layout.
        object.__setattr__(self, "_denoiser", Denoiser(self.network, process, parameterization, channels_last, variance))
        self._optimizer = optimizer
        self._lr_scheduler = lr_scheduler
        self.val_loss = MeanMetric()
        self.val_loss_quartiles = nn.ModuleList(MeanMetric() for _ in range(NUM_QUARTILES))
        # Build the default sampler once now: a bad option (sampler.eta=-1, an unknown diffusers
        # scheduler option, num_steps=0) fails here, before training, not at the first validation.
        default_sampler, default_steps = self.make_sampler()
        default_sampler.set_timesteps(default_steps)

    # ---- the model -----------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return self.process.num_timesteps

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        shape = self.hparams.get("data_shape")
        return tuple(shape) if shape is not None else None

    @property
    def denoiser(self) -> Denoiser:
        """network + parameterization: denoiser(x_t, t, cond=None) -> Prediction(x0, eps, log_var)."""
        return self._denoiser

    @property
    def parameterization(self) -> Parameterization:
        return self._denoiser.parameterization

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        """The raw network output for x_t at timesteps t (B,)."""
        return self._denoiser.network_output(x_t, t, cond)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.data_shape is None and dm is not None and hasattr(dm, "data_shape"):
            self.hparams["data_shape"] = list(dm.data_shape)
        if stage == "fit":
            if self.hparams.channels_last:
                self.network.to(memory_format=torch.channels_last)
            if self.hparams.compile:
                # in place, so parameter names (and checkpoints) are unchanged
                self.network.compile()

    # ---- training ------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # Every DDP rank was seeded alike (identical initial weights); from here each draws its
        # own timesteps and noise, or the ranks would average W copies of one draw.
        if self.trainer.world_size > 1:
            seed_rank(self.trainer.global_rank, self.trainer.global_step)

    def draw_timesteps(self, batch_size: int) -> torch.Tensor:
        """t ~ U{0, ..., T-1} (DDPM Algorithm 1, line 3). Override for importance sampling."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=self.device)

    def loss_per_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        cond: Cond = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of each example (B,) and the timesteps it was computed at (B,)."""
        weights = None
        if t is None and self.timestep_sampler is not None and self.training:
            t, weights = self.timestep_sampler.draw(x0.shape[0], self.device)
        elif t is None:
            t = self.draw_timesteps(x0.shape[0])
        x_t, noise = self.process.q_sample(x0, t, noise=noise, generator=generator)
        loss = self.loss_fn.training_loss(self.denoiser, x0, x_t, noise, t, self(x_t, t, cond))
        if weights is not None:
            self.timestep_sampler.update(*self._all_ranks(t, loss.detach()))
            loss = loss * weights
        return loss, t

    def _all_ranks(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The tensors of every DDP rank, concatenated (so that every rank keeps one history)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return list(tensors)
        return [self.all_gather(x).reshape(-1) for x in tensors]

    def _images(self, batch: Any) -> torch.Tensor:
        # tensors, or (image, label) batches (whose labels an unconditional model ignores)
        return self.conditioning.split(batch)[0]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0, cond = self.conditioning.split(batch)
        # classifier-free guidance's condition dropout (Ho & Salimans 2022, Algorithm 1)
        # (cond only when there is one: subclasses' loss_per_sample(x0, t, noise) keep working)
        cond = self.conditioning.drop(cond)
        loss, _ = self.loss_per_sample(x0) if cond is None else self.loss_per_sample(x0, cond=cond)
        loss = loss.mean()
        # a device tensor: Lightning reduces it only every log_every_n_steps (no per-step sync)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x0, cond = self.conditioning.split(batch, generator=torch.Generator().manual_seed(2**40 + batch_idx))  # fixed masks
        # the same timesteps and noise for this batch at every validation: curves are comparable
        g = torch.Generator().manual_seed(batch_idx)
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=g).to(self.device)
        noise = randn(x0.shape, g, x0.device, x0.dtype)
        kwargs = {} if cond is None else {"cond": cond}
        loss, t = self.loss_per_sample(x0, t=t, noise=noise, **kwargs)
        self.val_loss.update(loss)
        quartile = t * NUM_QUARTILES // self.num_timesteps
        for q, metric in enumerate(self.val_loss_quartiles):
            # weight 0 for the other quartiles keeps shapes static (no boolean indexing sync)
            metric.update(loss, weight=(quartile == q).to(loss.dtype))
        self.log("val/loss", self.val_loss, prog_bar=True)
        for q, metric in enumerate(self.val_loss_quartiles):
            self.log(f"val/loss_q{q}", metric)

    # ---- sampling ------------------------------------------------------------------------
    def make_sampler(self, sampler: str | Mapping[str, Any] | Sampler | None = None, **overrides: Any) -> tuple[Sampler, int | None]:
        """A sampler and its number of steps from a name, a spec dict, or the default spec.

        A spec is `{"name": ..., "num_steps": ..., **sampler options}`; a bare name takes the
        options of its preset (conf/sampler/<name>.yaml, e.g. 50 steps for ddim).
        `clip_denoised: null` means: clip x0_hat to [-1, 1] for images, not for other data."""
        if isinstance(sampler, Sampler):
            return sampler, overrides.get("num_steps")
        if isinstance(sampler, str):
            spec: dict[str, Any] = sampler_preset(sampler)
        else:
            spec = dict(_plain(sampler) if sampler is not None else self.hparams.sampler)
        spec.update(overrides)
        name = spec.pop("name", "ddpm")
        num_steps = spec.pop("num_steps", None)
        if spec.get("clip_denoised", None) is None:
            spec["clip_denoised"] = self.data_shape is not None and len(self.data_shape) == 3
        return get_sampler(name, self.process, **spec), num_steps

    def sample(
        self,
        n: int | None = None,
        *,
        noise: torch.Tensor | None = None,
        sampler: str | Mapping[str, Any] | Sampler | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        strength: float = 1.0,
        cond: Cond = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        return_trajectory: bool = False,
        progress: bool = False,
    ) -> SampleOutput:
        """Draw `n` samples (or one per row of `noise` / `image` / of a batch of conditions, such as
        `cond={"image": c}` of shape (n, c, H, W)) with the given sampler (default: the module's),
        in eval mode and under inference mode. See
        `ddpm_lightning.sampling.denoising_loop` for img2img (`image`, `strength`), inpainting
        (`image`, `mask`) and per-sample generators.

        A conditional model takes `cond` as its conditioning says (`{"class": 7}`, one label per
        sample, or `{"class": "all"}` for classes 0..K-1 in turn) and samples with classifier-free
        guidance at `guidance_scale` (diffusers' w: 1 conditional, 0 unconditional, > 1 guided;
        None: the conditioning's default) and guidance rescale phi `guidance_rescale`."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
        shape = None
        if noise is None and image is None:
            if n is None:  # a batch of condition images (or of labels) says how many
                n = self.conditioning.batch_of(cond)
            if n is None:
                raise ValueError("give n, a starting noise, an image, or a batch of conditions (cond={'image': (n, c, H, W)})")
            if self.data_shape is None:
                raise ValueError("unknown data shape: pass data_shape= to DiffusionModule")
            shape = (n, *self.data_shape)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        batch = n if shape is not None else (noise if noise is not None else image).shape[0]
        cond = self.conditioning.prepare(cond, batch, self.device)  # checked before any work
        denoiser = self.conditioning.guided(self.denoiser, guidance_scale, guidance_rescale)
        spec_sampler, spec_steps = self.make_sampler(sampler)
        was_training = self.training
        self.eval()
        try:
            return denoising_loop(
                denoiser,
                spec_sampler,
                shape,
                cond=cond,
                num_steps=num_steps if num_steps is not None else spec_steps,
                generator=generator,
                noise=noise,
                image=image,
                mask=mask,
                strength=strength,
                return_trajectory=return_trajectory,
                progress=progress,
                device=self.device,
            )
        finally:
            self.train(was_training)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """`Trainer.predict` over a loader of starting noises (see `noise_loader`): samples."""
        return self.sample(noise=self._images(batch)).samples

    # ---- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        make_opt = self._optimizer
        if make_opt is None:
            make_opt = functools.partial(torch.optim.AdamW, lr=2e-4)  # Ho et al. 2020, App. B
        optimizer = _build(make_opt) if isinstance(make_opt, Mapping) else make_opt
        optimizer = optimizer(self.parameters())
        if not self._lr_scheduler:  # None, or an empty config (lr_scheduler=none)
            return optimizer
        make_sched = _build(self._lr_scheduler) if isinstance(self._lr_scheduler, Mapping) else self._lr_scheduler
        scheduler = make_sched(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales inside
        # step() (fused AdamW): under fp16 loss scaling the gradients here are still scaled. bf16
        # (and fp32) has no loss scaler, so they are the true gradients: clip them as Lightning's
        # base plugin does. That lets `optimizer.fused=true` keep Ho et al.'s clipping at 1.0.
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and getattr(plugin, "scaler", None) is None and getattr(optimizer, "_step_supports_amp_scaling", False):
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
