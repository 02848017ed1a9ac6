"""The EMA callback: its average follows the closed-form recurrence, and its update reads no
device tensor on the host (a sync per step on a GPU)."""

from __future__ import annotations

import lightning as L
import torch
from torch.overrides import TorchFunctionMode

from ddpm_lightning import EMA, DiffusionModule
from ddpm_lightning.networks import MLPDenoiser

HOST_READS = {"item", "__bool__", "tolist", "cpu", "numpy", "__int__", "__float__", "__index__", "nonzero"}


class Recorder(DiffusionModule):
    """Keeps a copy of the live weights after every optimizer step (the module's
    on_train_batch_end runs after the callbacks', so the EMA has seen the same weights)."""

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.history.append([p.detach().clone() for p in self.parameters()])


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST_READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _fit(ema: EMA, steps: int) -> Recorder:
    torch.manual_seed(0)
    model = Recorder(network=MLPDenoiser(dim=2, hidden=16, depth=2),
                     schedule={"schedule": "linear", "num_timesteps": 50}, data_shape=(2,),
                     optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    model.history = []
    data = torch.utils.data.DataLoader(torch.randn(64, 2), batch_size=8)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", callbacks=[ema], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0)
    trainer.fit(model, train_dataloaders=data)
    return model


def test_average_follows_the_recurrence_with_warmup_start_and_stride():
    ema = EMA(decay=0.9, warmup=True, update_every_n_steps=2, start_step=1)
    model = _fit(ema, steps=7)
    # updates after optimizer steps 1, 3, 5 (0-based): copy, then lerp with min(0.9, (1+n)/(10+n))
    expected = [p.clone() for p in model.history[1]]
    for n, step in enumerate([3, 5], start=1):
        decay = min(0.9, (1 + n) / (10 + n))
        expected = [decay * e + (1 - decay) * p for e, p in zip(expected, model.history[step])]
    averaged = list(ema._average_model.module.parameters())
    assert ema._num_updates == 3
    # training ended: Lightning copied the average into the live model
    for e, a, live in zip(expected, averaged, model.parameters()):
        torch.testing.assert_close(a, e)
        torch.testing.assert_close(live, e)
    # and the average is not the last live weights (the test would pass for a no-op otherwise)
    assert any(not torch.allclose(e, p) for e, p in zip(expected, model.history[-1]))


def test_update_reads_no_device_tensor_on_the_host():
    ema = EMA(decay=0.99)
    model = _fit(ema, steps=2)
    mode = HostReads()
    with mode:
        for _ in range(3):
            assert ema.should_update(step_idx=ema._num_updates)
            ema.update(model)
    assert mode.reads == []
    assert int(ema._average_model.n_averaged) == ema._num_updates == 5
