"""DPM-Solver++ against diffusers' DPMSolverMultistepScheduler, and the diffusers adapter: full
deterministic loops, the exact denoiser of Gaussian data, and bad options."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from ddpm_lightning.parameterizations import PARAMETERIZATIONS, Prediction, get_parameterization
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers import SAMPLERS, DDIMSampler, DiffusersSampler, DPMSolverSampler, get_sampler
from ddpm_lightning.samplers.diffusers_adapter import KNOWN_GOOD
from ddpm_lightning.samplers.dpm_solver import dpm_solver_timesteps
from ddpm_lightning.sampling import sample

PRED_TYPES = {"epsilon": "epsilon", "v": "v_prediction"}  # ours -> diffusers prediction_type
T = 1000
M, S = 0.7, 0.4  # the data distribution N(M, S^2)


def toy_network(process, param):
    """A fixed, nonlinear, t-dependent stand-in for a trained network, in the output space of
    `param`, whose x0_hat stays bounded (so the loops compare numbers of order 1)."""

    def model(x, t):
        tt = t.float().reshape(-1, *([1] * (x.ndim - 1))) / T
        x0 = torch.tanh(x) * (1 - tt) + 0.3 * torch.sin(3 * x + tt)
        return param.from_prediction(process, x, t, Prediction(x0, process.eps_from_x0(x, t, x0)))

    return model


def gaussian_oracle(process, param):
    """The exact network for x_0 ~ N(M, S^2) (as in test_sampling.py; `process.at` is `extract`
    at integer t and also defined at the continuous t of the sigma-space schedulers)."""

    def model(x_t, t):
        a = process.at("sqrt_alphas_cumprod", t, x_t.shape).double()
        x0 = M + a * S**2 * (x_t.double() - a * M) / (a**2 * S**2 + 1 - a**2)
        eps = process.eps_from_x0(x_t.double(), t, x0)
        return param.from_prediction(process, x_t.double(), t, Prediction(x0, eps)).float()

    return model


def oracle_error(process, param, sampler, steps):
    p = get_parameterization(param)
    x = sample(gaussian_oracle(process, p), process, p, sampler, (4000, 2), num_steps=steps,
               generator=torch.Generator().manual_seed(0)).samples.double()
    return abs(x.mean() - M), abs(x.std() - S)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 7, 20, 26, 48, 999])  # 26, 48: rounding at exact halves
def test_timesteps_equal_diffusers(spacing, n):
    ref = DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    ref.set_timesteps(n)
    assert dpm_solver_timesteps(T, n, spacing).tolist() == ref.timesteps.tolist()


# Cosine + epsilon only with `leading`, which does not visit t = T-1: there abar = 2.4e-9 and
# x0_hat = (x_t - sigma eps) / alpha amplifies float32 rounding 2e4 times, so two correct
# implementations agree only to ~1e-3 (v and x0 are well conditioned there).
LOOP_CASES = [
    (schedule, param, spacing)
    for schedule in ("linear", "cosine")
    for param in PRED_TYPES
    for spacing in ("linspace", "leading", "trailing")
    if not (schedule == "cosine" and param == "epsilon" and spacing != "leading")
]


@pytest.mark.parametrize("schedule, param, spacing", LOOP_CASES)
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("n, final_sigma", [(8, "zero"), (25, "zero"), (8, "sigma_min"), (25, "sigma_min")])
def test_full_dpm_solver_loop_equals_diffusers(schedule, param, spacing, order, n, final_sigma):
    process = DiffusionProcess(schedule, T)
    net = toy_network(process, get_parameterization(param))
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=process.betas.numpy(), algorithm_type="dpmsolver++",
        solver_order=order, prediction_type=PRED_TYPES[param], timestep_spacing=spacing,
        final_sigmas_type=final_sigma,  # lower_order_final=True, solver_type="midpoint": defaults
    )
    ref.set_timesteps(n)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(net(x, t.expand(x.shape[0])), t, x).prev_sample
    sampler = DPMSolverSampler(process, solver_order=order, spacing=spacing, final_sigma=final_sigma)
    ours = sample(net, process, param, sampler, noise=x_T, num_steps=n).samples
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_first_order_is_ddim():
    """DPM-Solver++(1) is DDIM with eta = 0 (Lu et al. 2022, sec. 4.1)."""
    process = DiffusionProcess("cosine", T)
    net = toy_network(process, get_parameterization("v"))
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    a = sample(net, process, "v", DPMSolverSampler(process, solver_order=1), noise=x_T, num_steps=30).samples
    b = sample(net, process, "v", DDIMSampler(process), noise=x_T, num_steps=30).samples
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("param", list(PARAMETERIZATIONS))
def test_dpm_solver_recovers_the_data_distribution(param):
    process = DiffusionProcess("cosine", T)
    err_mean, err_std = oracle_error(process, param, DPMSolverSampler(process), 20)
    assert err_mean < 0.02 and err_std < 0.02, (err_mean, err_std)


def test_second_order_beats_first_order():
    """The 2M correction must be doing something: at 10 steps it more than halves the error."""
    process = DiffusionProcess("cosine", T)
    _, first = oracle_error(process, "epsilon", DPMSolverSampler(process, solver_order=1), 10)
    _, second = oracle_error(process, "epsilon", DPMSolverSampler(process, solver_order=2), 10)
    assert second < 0.5 * first, (first, second)


# (options, steps) per scheduler in KNOWN_GOOD: DDIM and DDPM with `trailing` (their default
# `leading` never starts at t = T-1), DDPM with enough steps for an ancestral sampler
ADAPTER_CASES = {
    "DDIMScheduler": (dict(spacing="trailing"), 50),
    "DDIMParallelScheduler": (dict(spacing="trailing"), 50),
    "DDPMScheduler": (dict(spacing="trailing"), 200),
    "DDPMParallelScheduler": (dict(spacing="trailing"), 200),
    "DEISMultistepScheduler": ({}, 20),
    "DPMSolverMultistepScheduler": ({}, 20),
    "DPMSolverSinglestepScheduler": ({}, 30),
    "SASolverScheduler": ({}, 20),
    "UniPCMultistepScheduler": ({}, 20),
    # sigma-space schedulers, converted to and from our x_t (more steps: cosine's sigma_max is 2e4)
    "EulerDiscreteScheduler": ({}, 50),
    "EulerAncestralDiscreteScheduler": ({}, 200),
    "HeunDiscreteScheduler": ({}, 100),
}


def test_every_known_good_scheduler_is_tested():
    assert set(ADAPTER_CASES) == set(KNOWN_GOOD)


@pytest.mark.parametrize("scheduler", list(ADAPTER_CASES))
def test_diffusers_adapter_recovers_the_data_distribution(scheduler):
    process = DiffusionProcess("cosine", T)
    options, steps = ADAPTER_CASES[scheduler]
    sampler = DiffusersSampler(process, scheduler, **options)
    err_mean, err_std = oracle_error(process, "epsilon", sampler, steps)
    assert err_mean < 0.02 and err_std < 0.02, (scheduler, err_mean, err_std)


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_diffusers_adapter_works_with_v_prediction(scheduler):
    process = DiffusionProcess("cosine", T)
    err_mean, err_std = oracle_error(process, "v", DiffusersSampler(process, scheduler), 20)
    assert err_mean < 0.02 and err_std < 0.02, (scheduler, err_mean, err_std)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_adapter_equals_our_dpm_solver_including_img2img(strength):
    """The same algorithm two ways: our DPM-Solver++ and diffusers' through the adapter (which
    starts with a first-order step when img2img enters the schedule midway, as ours does)."""
    process = DiffusionProcess("linear", T)
    net = toy_network(process, get_parameterization("x0"))
    image = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    kw = dict(image=image, strength=strength, num_steps=12, generator=torch.Generator().manual_seed(3))
    ours = sample(net, process, "x0", DPMSolverSampler(process, spacing="linspace"), **kw).samples
    kw["generator"] = torch.Generator().manual_seed(3)
    theirs = sample(net, process, "x0", DiffusersSampler(process, "DPMSolverMultistep"), **kw).samples
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "make", [lambda p: DPMSolverSampler(p), lambda p: DiffusersSampler(p, "UniPCMultistepScheduler")], ids=["ours", "unipc"]
)
def test_inpainting_keeps_the_known_region(make):
    process = DiffusionProcess("linear", 200)
    image = torch.rand(2, 1, 6, 6) * 2 - 1
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 1:4, 1:4] = 1
    out = sample(lambda x, t: 0.5 * x, process, "epsilon", make(process), image=image, mask=mask,
                 num_steps=10, generator=torch.Generator().manual_seed(0))
    keep = mask.expand_as(image) == 0
    assert torch.equal(out.samples[keep], image[keep])


def test_determinism_and_history_reset():
    process = DiffusionProcess("linear", 100)
    net = toy_network(process, get_parameterization("epsilon"))

    def run(sampler, seed):
        return sample(net, process, "epsilon", sampler, (3, 2), num_steps=10,
                      generator=torch.Generator().manual_seed(seed)).samples

    dpm = DPMSolverSampler(process)
    first = run(dpm, 0)
    assert torch.equal(first, run(dpm, 0))  # reused: set_timesteps forgets the x0_hat history
    assert not torch.equal(first, run(dpm, 1))  # the seed draws x_T
    ddpm = DiffusersSampler(process, "DDPMScheduler")  # stochastic: the generator drives each step
    a, b, c = run(ddpm, 5), run(ddpm, 5), run(ddpm, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_registry():
    process = DiffusionProcess("linear", 50)
    assert SAMPLERS["dpmpp_2m"] is SAMPLERS["dpm_solver++"] is DPMSolverSampler
    assert get_sampler("dpmpp_2m", process, solver_order=1).solver_order == 1
    s = get_sampler("diffusers", process, scheduler="DDIMScheduler", spacing="trailing", step_kwargs={"eta": 1.0})
    assert s.set_timesteps(5).tolist() == [49, 39, 29, 19, 9]
    assert "DDIMScheduler" in repr(s) and s.scheduler.config.prediction_type == "epsilon"


def test_adapter_takes_our_schedule_and_keeps_the_instance_options():
    process = DiffusionProcess("linear", T, zero_terminal_snr=True)
    s = DiffusersSampler(process, UniPCMultistepScheduler(solver_order=3, prediction_type="v_prediction"))
    cfg = s.scheduler.config
    assert cfg.solver_order == 3 and cfg.prediction_type == "epsilon" and cfg.rescale_betas_zero_snr
    torch.testing.assert_close(s.scheduler.alphas_cumprod, process.alphas_cumprod, rtol=1e-4, atol=1e-7)
    out = sample(lambda x, t: 0.1 * x, process, "v", s, (2, 3), num_steps=10).samples
    assert out.isfinite().all()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: DPMSolverSampler(p, solver_order=3), r"solver_order 3; choose one of \[1, 2\]"),
        (lambda p: DPMSolverSampler(p, final_sigma="min"), r"choose one of \['zero', 'sigma_min'\]"),
        (lambda p: DPMSolverSampler(p, spacing="even"), "leading"),
        (lambda p: DPMSolverSampler(p).set_timesteps(0), r"\[1, 1000\]"),
        (lambda p: get_sampler("dpmpp_3m", p), r"'dpmpp_2m', 'dpm_solver\+\+', 'diffusers'"),
        (lambda p: DiffusersSampler(p, "NoSuchScheduler"), "unknown diffusers scheduler.*UniPCMultistepScheduler"),
        (lambda p: DiffusersSampler(p, "LMSDiscreteScheduler"), "noise of std.*DPMSolverMultistepScheduler"),
        (lambda p: DiffusersSampler(p, "PNDMScheduler"), "not distinct"),
        (lambda p: DiffusersSampler(p, "DDIMInverseScheduler"), "descending"),
        (lambda p: DiffusersSampler(p, "FlowMatchEulerDiscreteScheduler"), "discrete beta schedule"),
        (lambda p: DiffusersSampler(p, "CogVideoXDDIMScheduler"), "changes the noise schedule"),
        (lambda p: DiffusersSampler(p, prediction_type="v_prediction"), "set by DiffusersSampler"),
        (lambda p: DiffusersSampler(p, "DPMSolverSinglestepScheduler", spacing="trailing"), "no timestep_spacing"),
        (lambda p: DiffusersSampler(p, 3), "not a diffusers scheduler"),
        (lambda p: DiffusersSampler(p, "DDIMScheduler", eta=1.0), r"no option\(s\) \['eta'\]; choose from"),
        (lambda p: DiffusersSampler(p, "DDIMScheduler", step_kwargs={"etta": 1}), r"step has no option.*'eta'"),
    ],
)
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make(DiffusionProcess("linear", T))
