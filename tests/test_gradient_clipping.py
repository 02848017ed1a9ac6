"""Fused AdamW (the GPU fast path's optimizer) keeps the gradient clipping of the config: Lightning
2.6's mixed-precision plugin refuses to clip for it, DiffusionModule clips where that is sound
(no loss scaler: fp32 and bf16-mixed)."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from ddpm_lightning import DiffusionModule
from ddpm_lightning.networks import MLPDenoiser

CLIP = 1e-3  # far below the gradient norm of an untrained network: every step must clip


def grad_norm(module: torch.nn.Module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None])).item()


class NormSpy(DiffusionModule):
    """Records the gradient norm before and after the module's clipping hook."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        before = grad_norm(self)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.norms.append((before, grad_norm(self)))


def _fit(precision: str, fused: bool) -> NormSpy:
    torch.manual_seed(0)
    model = NormSpy(network=MLPDenoiser(dim=2, hidden=32, depth=2), data_shape=(2,),
                    schedule={"schedule": "linear", "num_timesteps": 50},
                    optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, fused=fused))
    model.norms = []
    trainer = L.Trainer(max_steps=3, accelerator="cpu", precision=precision, gradient_clip_val=CLIP, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=16))
    return model


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
@pytest.mark.parametrize("fused", [True, False])
def test_gradients_are_clipped_with_and_without_fused_adamw(precision, fused):
    model = _fit(precision, fused)
    assert len(model.norms) == 3
    for before, after in model.norms:
        assert before > 10 * CLIP
        assert after == pytest.approx(CLIP, rel=1e-3)
