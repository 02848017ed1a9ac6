"""The sample grid of an image-conditioned model (`conditioning=image`): one row per fixed
validation image, columns condition | samples | ground truth, and the samples' PSNR / SSIM
against the ground truth logged as `val/psnr`, `val/ssim` (`metrics.restoration`).

`SampleGrid.draw` hands image-conditioned models to `draw` here. Rows are the first
`min(8, num_samples)` validation images (`datamodule.real_samples(rows, "val")`, the training
split if there is no validation split), each restored `max(1, min(6, num_samples // rows))`
times; sample i restores row i // per_row from the fixed noise (seed, i), so grids are
comparable all run long. Under DDP each rank samples its share and every rank gets the gathered
samples (the metrics are the same on every rank); rank 0 writes the picture.
"""

from __future__ import annotations

import torch

from ddpm_lightning import visualize
from ddpm_lightning.metrics.restoration import conditions, psnr_ssim
from ddpm_lightning.noise import fixed_samples

MAX_ROWS, MAX_PER_ROW = 8, 6


def targets(trainer, rows: int) -> torch.Tensor | None:
    """The grid's ground truth: the first `rows` validation images (or training images)."""
    dm = getattr(trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "real_samples"):
        return None
    for split in ("val", "train"):
        try:
            return dm.real_samples(rows, split)
        except ValueError:  # a split with fewer images
            continue
    return None


def draw(callback, trainer, pl_module, tag: str) -> None:
    rows = min(MAX_ROWS, callback.num_samples)
    x0 = targets(trainer, rows)
    if x0 is None:
        return
    rows, per_row = len(x0), max(1, min(MAX_PER_ROW, callback.num_samples // rows))
    cond = conditions(pl_module, x0, callback.seed)  # (rows, c, H, W) on the module's device
    world, rank = trainer.world_size, trainer.global_rank
    indices = list(range(rows * per_row))
    indices += indices[: (-len(indices)) % world]  # equal shares, so all_gather sees equal shapes
    mine = indices[rank::world]
    out = fixed_samples(pl_module, mine, callback.seed, sampler=callback.sampler,
                        cond={"image": cond[[i // per_row for i in mine]]})
    samples = out.samples
    if world > 1:
        gathered = pl_module.all_gather(samples)  # (world, n_local, ...) -> the order of `indices`
        samples = gathered.transpose(0, 1).reshape(-1, *samples.shape[1:])
    samples = samples[: rows * per_row].cpu()
    truth = x0.cpu().repeat_interleave(per_row, dim=0)
    scores = psnr_ssim(samples, truth)
    if tag != "final":  # at a validation (on_fit_end, outside any loop, cannot log)
        for name, value in scores.items():
            pl_module.log(f"val/{name}", value)
    write(callback, trainer, pl_module, tag, x0.cpu(), cond.cpu(), samples, per_row)


def write(callback, trainer, pl_module, tag: str, x0, cond, samples, per_row: int) -> None:
    if trainer.global_rank != 0:
        return
    c = x0.shape[1]
    picture = pl_module.conditioning.picture(cond, c)  # (rows, C, H, W)
    columns = [picture[:, None], samples.reshape(len(x0), per_row, *x0.shape[1:]), x0[:, None]]
    table = torch.cat(columns, dim=1)  # (rows, 1 + per_row + 1, C, H, W)
    img = visualize.image_grid(table.reshape(-1, *x0.shape[1:]), nrow=per_row + 2)
    path = visualize.save_png(img, callback.out_dir / f"samples_{tag}.png")
    visualize.save_png(img, callback.out_dir / "samples_latest.png")
    callback._last_paths["samples"] = path
    callback._log_image(trainer, "samples/samples", img, path)
