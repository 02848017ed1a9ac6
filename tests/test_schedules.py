"""Schedules: equal to diffusers where the two overlap, valid for any T, bad input rejected."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_zsnr

from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.schedules import SCHEDULES, make_betas, rescale_zero_terminal_snr

# our name -> (diffusers beta_schedule, extra kwargs used on both sides)
DIFFUSERS_NAMES = {
    "linear": ("linear", {}),
    "scaled_linear": ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
    "cosine": ("squaredcos_cap_v2", {}),
    "sigmoid_geodiff": ("sigmoid", {}),
}


@pytest.mark.parametrize("T", [10, 1000])
@pytest.mark.parametrize("name", list(DIFFUSERS_NAMES))
def test_betas_and_alphas_cumprod_equal_diffusers(name, T):
    theirs, kw = DIFFUSERS_NAMES[name]
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=theirs, **kw)
    ours = DiffusionProcess(name, T, **kw)
    torch.testing.assert_close(ours.betas, ref.betas.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.float(), atol=1e-6, rtol=0)


def test_zero_terminal_snr_equals_diffusers():
    betas = make_betas("linear", 1000)
    ours = rescale_zero_terminal_snr(betas)
    ref = diffusers_zsnr(betas.clone())  # both in float64
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    abar = torch.cumprod(1 - ours, 0)
    assert abar[-1] == 0 and abs(abar[0] - (1 - betas[0])) < 1e-12


@pytest.mark.parametrize("T", [1, 10, 1000, 4000])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_any_T(name, T):
    b = make_betas(name, T)
    assert b.dtype == torch.float64 and b.shape == (T,)
    assert ((b > 0) & (b < 1)).all()
    if T >= 1000 and name != "scaled_linear":  # SD's scaled_linear stops at abar_T ~ 0.005
        assert torch.cumprod(1 - b, 0)[-1] < 1e-3  # x_T is (close to) pure noise


def test_cosine_matches_nichol_dhariwal_formula():
    T, s = 1000, 0.008
    f = lambda t: torch.cos((t / T + s) / (1 + s) * torch.pi / 2) ** 2  # noqa: E731
    t = torch.arange(T + 1, dtype=torch.float64)
    abar = (f(t) / f(torch.zeros(1, dtype=torch.float64)))[1:]
    ours = torch.cumprod(1 - make_betas("cosine", T), 0)
    # identical until the 0.999 clipping of the last betas bends the curve
    torch.testing.assert_close(ours[:990], abar[:990], atol=1e-9, rtol=0)


def test_explicit_betas_and_buffers():
    p = DiffusionProcess([0.1, 0.2, 0.5])
    assert p.num_timesteps == 3
    torch.testing.assert_close(p.alphas_cumprod, torch.tensor([0.9, 0.72, 0.36]))
    names = dict(p.named_buffers())
    for key in ["betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
                "posterior_mean_coef2", "snr"]:
        assert key in names and key in p.state_dict()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"schedule": "cosinus", "num_timesteps": 10}, "choose one of"),
        ({"schedule": "linear", "num_timesteps": 0}, "num_timesteps"),
        ({"schedule": [0.1, 1.0]}, r"beta\[1\] = 1.0"),
        ({"schedule": [0.0, 0.5]}, r"beta\[0\]"),
        ({"schedule": [0.1, -0.2]}, r"beta\[1\]"),
        ({"schedule": []}, "at least one"),
    ],
)
def test_bad_schedules_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionProcess(**kwargs)


def test_zero_snr_needs_two_steps():
    with pytest.raises(ValueError, match="at least 2"):
        DiffusionProcess("cosine", 1, zero_terminal_snr=True)
