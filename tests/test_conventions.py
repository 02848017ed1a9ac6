"""Two conventions checked against improved-diffusion's code (Nichol & Dhariwal 2021): DDPM
respacing's timestep set, and a mu (PREVIOUS_X) model's mean under clipping."""

import torch

from ddpm_lightning import DDPMSampler, DiffusionModule
from ddpm_lightning.parameterizations import get_parameterization
from ddpm_lightning.process import DiffusionProcess


def improved_diffusion_space_timesteps(num_timesteps: int, count: int) -> set[int]:
    """respace.py's space_timesteps(num_timesteps, [count]) for one section (their code)."""
    frac_stride = (num_timesteps - 1) / (count - 1) if count > 1 else 1
    cur_idx, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur_idx))
        cur_idx += frac_stride
    return set(taken)


def test_ddpm_default_respacing_is_nichol_and_dhariwals():
    process = DiffusionProcess("linear", 1000)
    for n in (10, 25, 50, 100, 250, 1000):
        ours = DDPMSampler(process).set_timesteps(n)
        assert set(ours.tolist()) == improved_diffusion_space_timesteps(1000, n), n
        assert int(ours[0]) == 999  # unlike diffusers' `leading` (0, 20, ..., 980 for n = 50)
    assert int(DDPMSampler(process, spacing="leading").set_timesteps(50)[0]) == 980
    # the preset the `sampler=ddpm` group loads uses the same spacing
    assert DiffusionModule(lambda x, t: x, data_shape=(2,)).make_sampler("ddpm")[0].spacing == "linspace"


def test_mu_model_mean_is_the_network_output_with_clip_mean_false():
    process = DiffusionProcess("linear", 100)
    mu = get_parameterization("mu")
    g = torch.Generator().manual_seed(0)
    x_t = 3 * torch.randn(8, 1, 2, 2, generator=g)  # large: x0_hat falls outside [-1, 1]
    t = 40
    tt = torch.full((8,), t)
    out = 0.9 * x_t  # the network's mean
    pred = mu.predict(process, x_t, tt, out)
    assert pred.x0.abs().max() > 1
    noise = torch.randn(x_t.shape, generator=g)
    theirs = DDPMSampler(process, clip_denoised=True, clip_mean=False)
    theirs.set_timesteps(None)
    step = theirs.step(x_t, t, pred, noise=noise)
    std = float(process.posterior_variance[t].sqrt())
    # improved-diffusion p_mean_variance (PREVIOUS_X): model_mean = model_output
    torch.testing.assert_close(step.prev_sample - std * noise, out, rtol=1e-5, atol=1e-5)
    assert step.pred_x0.abs().max() <= 1  # the clipped x0_hat is what is reported
    ours = DDPMSampler(process, clip_denoised=True)  # default: mean from the clipped x0_hat
    ours.set_timesteps(None)
    clipped_mean = process.q_posterior(pred.x0.clamp(-1, 1), x_t, tt)[0]
    torch.testing.assert_close(ours.step(x_t, t, pred, noise=noise).prev_sample - std * noise, clipped_mean,
                               rtol=1e-5, atol=1e-5)
