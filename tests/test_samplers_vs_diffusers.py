"""Our DDPM and DDIM steps and loops against diffusers' schedulers (an independent
implementation of the same equations)."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ddpm_lightning.parameterizations import get_parameterization
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers import DDIMSampler, DDPMSampler, get_sampler, make_timesteps
from ddpm_lightning.samplers.thresholding import dynamic_threshold
from ddpm_lightning.sampling import sample

# our parameterization -> diffusers prediction_type
PRED_TYPES = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}
T = 1000


def toy_network(x, t):
    """A fixed, nonlinear, t-dependent stand-in for a trained network."""
    tt = t.float().reshape(-1, *([1] * (x.ndim - 1))) / T
    return torch.tanh(x) * (1 - tt) + 0.3 * torch.sin(3 * x + tt)


def _random_inputs(seed, shape=(3, 2, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_equal_diffusers_for_every_n(spacing):
    ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    for n in range(1, T + 1):
        ref.set_timesteps(n)
        assert make_timesteps(T, n, spacing).tolist() == ref.timesteps.tolist(), n


@pytest.mark.parametrize("param", list(PRED_TYPES))
@pytest.mark.parametrize("n", [1000, 50])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_step_equals_diffusers(param, n, variance):
    process = DiffusionProcess("linear", T)
    ours = DDPMSampler(process, variance=variance, spacing="leading")
    ours.set_timesteps(n)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", variance_type=variance,
                        clip_sample=False, prediction_type=PRED_TYPES[param], timestep_spacing="leading")
    ref.set_timesteps(n)
    p = get_parameterization(param)
    for t in [int(ref.timesteps[0]), int(ref.timesteps[len(ref.timesteps) // 2]), int(ref.timesteps[-1])]:
        x_t, out, _ = _random_inputs(t)
        want = ref.step(out, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        tt = torch.full((x_t.shape[0],), t)
        got = ours.step(x_t, t, p.predict(process, x_t, tt, out), generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("param", list(PRED_TYPES))
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("spacing, n", [("leading", 50), ("trailing", 50), ("trailing", 1000), ("linspace", 1000), ("leading", 1)])
def test_ddim_step_equals_diffusers(param, eta, spacing, n):
    process = DiffusionProcess("linear", T)
    ours = DDIMSampler(process, eta=eta, spacing=spacing)
    ours.set_timesteps(n)
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                        prediction_type=PRED_TYPES[param], timestep_spacing=spacing, set_alpha_to_one=True)
    ref.set_timesteps(n)
    p = get_parameterization(param)
    for t in ref.timesteps[:: max(1, n // 5)].tolist() + [int(ref.timesteps[-1])]:
        x_t, out, noise = _random_inputs(t)
        want = ref.step(out, t, x_t, eta=eta, variance_noise=noise).prev_sample
        tt = torch.full((x_t.shape[0],), t)
        got = ours.step(x_t, t, p.predict(process, x_t, tt, out), noise=noise).prev_sample
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("param", list(PRED_TYPES))
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("schedule, theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_full_deterministic_ddim_loop_equals_diffusers(param, spacing, schedule, theirs):
    process = DiffusionProcess(schedule, T)
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule=theirs, clip_sample=False,
                        prediction_type=PRED_TYPES[param], timestep_spacing=spacing)
    n = 25
    ref.set_timesteps(n)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(toy_network(x, t.expand(x.shape[0])), t, x, eta=0.0).prev_sample
    ours = sample(toy_network, process, param, DDIMSampler(process, eta=0.0, spacing=spacing),
                  noise=x_T, num_steps=n).samples
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_full_ddpm_loop_equals_diffusers_with_the_same_generator():
    process = DiffusionProcess("linear", T)
    ref = DDPMScheduler(num_train_timesteps=T, clip_sample=False)
    ref.set_timesteps(40)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(7)
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(toy_network(x, t.expand(2)), t, x, generator=g).prev_sample
    ours = sample(toy_network, process, "epsilon", DDPMSampler(process, spacing="leading"),
                  noise=x_T, num_steps=40, generator=torch.Generator().manual_seed(7)).samples
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_dynamic_threshold_equals_diffusers():
    ref = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.5)
    x0 = torch.randn(4, 3, 8, 8) * 3
    torch.testing.assert_close(dynamic_threshold(x0, 0.9, 2.5), ref._threshold_sample(x0))


def test_clipping_keeps_x0_in_range():
    process = DiffusionProcess("linear", T)
    s = get_sampler("ddim", process, clip_denoised=True)
    s.set_timesteps(10)
    x_t, out, _ = _random_inputs(0)
    t = int(s.timesteps[0])
    step = s.step(x_t * 5, t, get_parameterization("x0").predict(process, x_t * 5, torch.full((3,), t), out * 5))
    assert step.pred_x0.abs().max() <= 1.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: get_sampler("lms", p), r"choose one of \['ddpm', 'ddim'"),
        (lambda p: DDIMSampler(p, spacing="even"), "leading"),
        (lambda p: DDPMSampler(p, variance="learned"), "fixed_small"),
        (lambda p: DDIMSampler(p, eta=-0.1), "eta"),
        (lambda p: DDIMSampler(p).set_timesteps(0), r"\[1, 1000\]"),
        (lambda p: DDIMSampler(p).set_timesteps(1001), r"\[1, 1000\]"),
    ],
)
def test_bad_sampler_options(make, match):
    with pytest.raises(ValueError, match=match):
        make(DiffusionProcess("linear", T))
