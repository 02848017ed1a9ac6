"""Story: subclass DiffusionModule in another project and train with a plain lightning.Trainer,
no Hydra. The subclass is defined here, outside the package, as a user would."""

from __future__ import annotations

import lightning as L
import torch

from ddpm_lightning import DiffusionModule, EMA
from ddpm_lightning.data import DigitsDataModule
from ddpm_lightning.networks import network_config


class LowNoiseFirst(DiffusionModule):
    """Draw low-noise timesteps more often (t = T u^2)."""

    calls = 0

    def draw_timesteps(self, batch_size):
        type(self).calls += 1
        u = torch.rand(batch_size, device=self.device) ** 2
        return (u * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)


class L1Loss(DiffusionModule):
    """Replace the loss: L1 on the noise, whatever the config says."""

    def loss_per_sample(self, x0, t=None, noise=None, generator=None):
        t = self.draw_timesteps(x0.shape[0]) if t is None else t
        x_t, noise = self.process.q_sample(x0, t, noise=noise)
        return (self(x_t, t) - noise).abs().flatten(1).mean(1), t


def _train(cls, tmp_path):
    data = DigitsDataModule(batch_size=16)
    model = cls(
        network=network_config("unet_small", data.data_shape, block_out_channels=[16, 16, 32],
                               attention_head_dim=8, norm_num_groups=8),
        schedule={"schedule": "cosine", "num_timesteps": 100},
        parameterization="v",
        sampler={"name": "ddim", "num_steps": 5},
        data_shape=data.data_shape,
    )
    trainer = L.Trainer(max_steps=5, accelerator="cpu", callbacks=[EMA(decay=0.9)], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        limit_val_batches=1, val_check_interval=5)
    trainer.fit(model, datamodule=data)
    return model, trainer


def test_subclass_overriding_timestep_draws_trains_and_samples(tmp_path):
    LowNoiseFirst.calls = 0
    model, trainer = _train(LowNoiseFirst, tmp_path)
    assert trainer.global_step == 5 and LowNoiseFirst.calls == 5
    assert model.sample(4, seed=0).samples.shape == (4, 1, 16, 16)
    # the checkpoint of a subclass loads into the subclass, network rebuilt from its config
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = LowNoiseFirst.load_from_checkpoint(tmp_path / "m.ckpt")
    torch.testing.assert_close(loaded.sample(2, seed=1).samples, model.sample(2, seed=1).samples)


def test_subclass_overriding_the_loss(tmp_path):
    model, trainer = _train(L1Loss, tmp_path)
    x0 = torch.zeros(3, 1, 16, 16)
    loss, t = model.loss_per_sample(x0)
    assert loss.shape == (3,) and (loss >= 0).all()
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
