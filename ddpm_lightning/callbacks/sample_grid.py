"""`SampleGrid`: pictures of the model's samples while training, with the EMA weights.

Every `every_n_steps` (at a validation), it samples from the same fixed noise all run long, so
the grids show the same samples getting better: sample i's starting and step noise come from
(seed, i) (`noise.fixed_samples`), as in the FID callback and the sample command, so
`python -m ddpm_lightning.sample ckpt=... n=num_samples seed=seed` with the same sampler draws
the same samples. It also draws a strip of the denoising
trajectory (x_t, and the model's x0_hat, at evenly spaced steps) and, once, a strip of real
images being noised by the forward process. Pictures are saved as PNG in `out_dir` and logged to
W&B and TensorBoard loggers; 2-D data gets scatter plots instead. An image-conditioned model
gets columns condition | samples | ground truth and val/psnr, val/ssim (`restoration_grid`).

A class-conditional model draws sample i with class i mod K (`Conditioning.balanced`) at the
guidance `guidance_scale` (None: the model's `conditioning.guidance_scale`), and its grid has one
row per class, classes 0..K-1 top to bottom, each labelled: `num_samples` is rounded to the
nearest multiple of K (at least one sample per class), `num_samples // K` columns.

Sampling happens in `on_validation_batch_end`: inside the validation epoch, where Lightning's
weight-averaging callback has swapped the EMA weights in, whatever the callback order. Under DDP
each rank samples its share of the fixed noise and rank 0 writes the gathered grid.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from ddpm_lightning import visualize
from ddpm_lightning.callbacks import restoration_grid
from ddpm_lightning.guidance import check_guidance
from ddpm_lightning.noise import fixed_noise, fixed_samples


class SampleGrid(Callback):
    """Log sample grids, denoising trajectories and forward-noising strips.

    Args:
        every_n_steps: minimum number of optimizer steps between two grids (grids are drawn
            at validations, so set `trainer.val_check_interval` accordingly).
        num_samples: samples per grid.
        seed: seed of the fixed starting noise.
        sampler: a sampler spec ({"name": "ddim", "num_steps": 50, ...}); None: the model's.
        trajectory_samples: rows of the trajectory strip (0: none).
        trajectory_frames: columns of the trajectory strip.
        forward_samples: rows of the forward-noising strip of real images (0: none).
        out_dir: where PNGs go; default `<trainer.default_root_dir>/samples`.
        guidance_scale: classifier-free guidance w of a conditional model's grids (None: the
            model's `conditioning.guidance_scale`); an unconditional model takes only None or 1.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_samples: int = 64,
        seed: int = 0,
        sampler: dict[str, Any] | str | None = None,
        trajectory_samples: int = 8,
        trajectory_frames: int = 10,
        forward_samples: int = 8,
        out_dir: str | None = None,
        guidance_scale: float | None = None,
    ) -> None:
        if every_n_steps < 1 or num_samples < 1:
            raise ValueError(f"every_n_steps and num_samples must be >= 1, got {every_n_steps}, {num_samples}")
        if guidance_scale is not None:
            check_guidance(guidance_scale)
        self.guidance_scale = guidance_scale
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.seed = seed
        self.sampler = sampler
        self.trajectory_samples = trajectory_samples
        self.trajectory_frames = trajectory_frames
        self.forward_samples = forward_samples
        self.out_dir = Path(out_dir) if out_dir else None
        self._last_step: int | None = None
        self._last_paths: dict[str, Path] = {}
        self._forward_done = False

    # ---- start-up check (called by train.build before the Trainer starts) -----------------
    def check(self, datamodule: Any = None, model: Any = None) -> None:
        """A guidance the model cannot take (w != 1 for an unconditional model) fails now."""
        if model is not None and hasattr(model, "conditioning"):
            model.conditioning.guided(model.denoiser, self.guidance_scale)

    @staticmethod
    def num_classes(pl_module) -> int | None:
        """K of a class-conditional model (its grids have one row per class), else None."""
        conditioning = getattr(pl_module, "conditioning", None)
        return getattr(conditioning, "num_classes", None)

    def grid_size(self, pl_module) -> int:
        """num_samples, for a class-conditional image model rounded to a multiple of K (>= K)."""
        k = self.num_classes(pl_module)
        if k is None or len(pl_module.data_shape) != 3:
            return self.num_samples
        return k * max(1, round(self.num_samples / k))

    # ---- hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.out_dir is None:
            self.out_dir = Path(trainer.default_root_dir) / "samples"

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or trainer.fast_dev_run:
            return
        step = trainer.global_step
        if self._last_step is not None and step - self._last_step < self.every_n_steps:
            return
        self._last_step = step
        self.draw(trainer, pl_module, tag=f"step_{step:07d}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after on_train_end, when the EMA weights have been copied into the model
        if trainer.fast_dev_run:
            return
        if self._last_step == trainer.global_step:
            # the last validation already drew these very weights (every rank takes this branch:
            # draw() would all_gather, so the ranks must agree on it)
            self._copy_as_final()
        else:
            self.draw(trainer, pl_module, tag="final")

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step")

    # ---- drawing -------------------------------------------------------------------------
    def draw(self, trainer: L.Trainer, pl_module, tag: str) -> None:
        if pl_module.data_shape is None:
            return
        if getattr(pl_module.conditioning, "type", None) == "image":  # condition | samples | ground truth
            return restoration_grid.draw(self, trainer, pl_module, tag)
        world, rank = trainer.world_size, trainer.global_rank
        total = self.grid_size(pl_module)
        indices = list(range(total))
        indices += indices[: (-len(indices)) % world]  # equal shares, so all_gather sees equal shapes
        want_traj = rank == 0 and self.trajectory_samples > 0 and len(pl_module.data_shape) == 3
        # a class-conditional module gives sample i class i mod K (fixed_samples), here at the grid's guidance
        guide = {"guidance_scale": self.guidance_scale} if self.num_classes(pl_module) is not None else {}
        out = fixed_samples(pl_module, indices[rank::world], self.seed, sampler=self.sampler, return_trajectory=want_traj,
                            **guide)
        samples = out.samples
        if world > 1:
            # (world, n_local, ...) -> interleave back to the order of the fixed noise
            gathered = pl_module.all_gather(samples)
            samples = gathered.transpose(0, 1).reshape(-1, *samples.shape[1:])
        samples = samples[:total]
        self._write(trainer, pl_module, tag, samples, out if want_traj else None)

    @rank_zero_only
    def _write(self, trainer, pl_module, tag: str, samples: torch.Tensor, out) -> None:
        images: dict[str, np.ndarray] = {}
        if len(pl_module.data_shape) == 3:
            k = self.num_classes(pl_module)
            if k is None:
                images["samples"] = visualize.image_grid(samples)
            else:  # one labelled row per class
                names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule is not None else None
                names = names if names is not None and len(names) == k else None
                images["samples"] = visualize.class_grid(samples, k, names=names)
            if out is not None:
                k = self.trajectory_samples
                idx = visualize.frame_indices(len(out.trajectory), self.trajectory_frames)
                images["trajectory"] = visualize.strip(out.trajectory[idx, :k])
                idx0 = visualize.frame_indices(len(out.x0_trajectory), self.trajectory_frames)
                images["trajectory_x0"] = visualize.strip(out.x0_trajectory[idx0, :k])
            if self.forward_samples > 0 and not self._forward_done:
                strip_img = self._forward_strip(trainer, pl_module)
                if strip_img is not None:
                    images["forward"] = strip_img
                self._forward_done = True
        else:
            reference = self._real(trainer, len(samples))
            images["samples"] = visualize.scatter(samples, reference, title=f"{tag}")
        for name, img in images.items():
            path = visualize.save_png(img, self.out_dir / f"{name}_{tag}.png")
            visualize.save_png(img, self.out_dir / f"{name}_latest.png")
            self._last_paths[name] = path
            self._log_image(trainer, f"samples/{name}", img, path)

    @rank_zero_only
    def _copy_as_final(self) -> None:
        for name, path in self._last_paths.items():
            if name != "forward":
                shutil.copyfile(path, self.out_dir / f"{name}_final.png")

    def _real(self, trainer, n: int) -> torch.Tensor | None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "real_samples"):
            return None
        try:
            return dm.real_samples(n, "train")
        except ValueError:
            return None

    def _forward_strip(self, trainer, pl_module) -> np.ndarray | None:
        x0 = self._real(trainer, self.forward_samples)
        if x0 is None:
            return None
        process = pl_module.process
        T, cols = process.num_timesteps, max(2, self.trajectory_frames)
        ts = [round(i * (T - 1) / (cols - 1)) for i in range(cols)]
        noise = fixed_noise(range(len(x0)), x0.shape[1:], self.seed)
        x0, noise = x0.to(pl_module.device), noise.to(pl_module.device)
        frames = [x0] + [
            process.q_sample(x0, torch.full((len(x0),), t, device=x0.device), noise=noise)[0] for t in ts
        ]
        return visualize.strip(torch.stack(frames))

    @staticmethod
    def _log_image(trainer, key: str, image: np.ndarray, path: Path) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[image], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, image, trainer.global_step, dataformats="HWC" if image.ndim == 3 else "HW")
