"""The Denoiser (network + parameterization), continuous time, the sampler/denoiser interface,
the loss group, and checkpoints written before the redesign."""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpm_lightning import DDIMSampler, DDPMSampler, Denoiser, DiffusionLoss, DiffusionModule
from ddpm_lightning.sampling import sample  # (ddpm_lightning.sample is also the sample command's module)
from ddpm_lightning.parameterizations import PARAMETERIZATIONS, get_parameterization
from ddpm_lightning.process import DiffusionProcess, extract
from ddpm_lightning.samplers.base import Sampler, StepOutput

FIXTURES = Path(__file__).parent / "fixtures"


class Net(torch.nn.Module):
    """A deterministic toy network of x_t, t (and optionally a conditioning scale)."""

    def forward(self, x, t, cond=None):
        out = torch.tanh(x) * (1 + t.float()[:, None] / 100)
        return out * cond["scale"] if cond is not None else out


@pytest.mark.parametrize("name", list(PARAMETERIZATIONS))
def test_denoiser_equals_the_inline_conversion(name):
    process = DiffusionProcess("cosine", 100)
    param = get_parameterization(name)
    x_t = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 17, 50, 98, 99])
    net = Net()
    # what sampling.py and likelihood.py computed inline before the Denoiser existed
    expected = param.predict(process, x_t, t, net(x_t, t).float())
    got = Denoiser(net, process, name)(x_t, t)
    assert torch.equal(got.x0, expected.x0) and torch.equal(got.eps, expected.eps)
    assert got.log_var is None
    # an int broadcasts to the batch, as the samplers pass it
    one = Denoiser(net, process, name)(x_t, 17)
    assert torch.equal(one.x0, param.predict(process, x_t, torch.full((6,), 17), net(x_t, torch.full((6,), 17))).x0)


def test_module_denoiser_is_what_training_and_sampling_use():
    module = DiffusionModule(Net(), schedule={"name": "linear", "num_timesteps": 50}, parameterization="v", data_shape=(3,))
    x_t, t = torch.randn(4, 3), torch.tensor([0, 10, 20, 49])
    assert torch.equal(module(x_t, t), Net()(x_t, t))  # forward: the raw network output
    assert torch.equal(module.denoiser(x_t, t).x0, get_parameterization("v").predict(module.process, x_t, t, Net()(x_t, t)).x0)
    assert module.denoiser.network is module.network and module.denoiser.process is module.process
    # the denoiser is not registered twice: the state_dict keeps its layout
    assert not any(k.startswith("_denoiser") or k.startswith("denoiser") for k in module.state_dict())


def test_cond_reaches_the_network_and_two_argument_networks_still_work():
    process = DiffusionProcess("linear", 50)
    x, t = torch.randn(2, 3), torch.tensor([3, 4])
    den = Denoiser(Net(), process, "x0")
    assert torch.equal(den(x, t, {"scale": 2.0}).x0, 2 * den(x, t).x0)
    two_args = Denoiser(lambda x_t, t: 0.5 * x_t, process, "epsilon")  # the older contract
    assert torch.equal(two_args(x, t).eps, 0.5 * x)


def test_continuous_time_interpolates_log_snr_and_matches_the_grid():
    process = DiffusionProcess("cosine", 1000, dtype=torch.float64)
    t_int = torch.tensor([0, 5, 500, 999])
    for name in ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "snr", "log_one_minus_alphas_cumprod", "posterior_mean_coef1"):
        exact = process.at(name, t_int, (4, 1))
        assert torch.equal(exact, extract(getattr(process, name), t_int, (4, 1)))
        torch.testing.assert_close(process.at(name, t_int.double(), (4, 1)), exact, rtol=1e-9, atol=1e-12)
    # halfway between two timesteps the log-SNR is the mean of its neighbours' (closed form)
    log_snr = process.snr.log()
    mid = process.log_snr_at(torch.tensor([10.5]))
    torch.testing.assert_close(mid, (log_snr[10:11] + log_snr[11:12]) / 2)
    abar = process.at("alphas_cumprod", torch.tensor([10.5], dtype=torch.float64), (1,))
    torch.testing.assert_close(abar.reshape(-1), torch.sigmoid(mid))


def test_sigma_to_t_equals_diffusers():
    from diffusers import EulerDiscreteScheduler

    process = DiffusionProcess("linear", 1000, dtype=torch.float64)
    sigmas = np.array([0.0148, 0.03, 0.5, 1.0, 3.3, 40.0, 157.0])
    log_sigmas = np.log(((1 - process.alphas_cumprod) / process.alphas_cumprod).sqrt().numpy())
    theirs = EulerDiscreteScheduler()._sigma_to_t(sigmas, log_sigmas)
    ours = process.t_from_sigma(torch.from_numpy(sigmas))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(process.sigma_at(ours), torch.from_numpy(sigmas), rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", list(PARAMETERIZATIONS))
def test_at_sigma_is_the_same_prediction_in_the_variance_exploding_view(name):
    process = DiffusionProcess("linear", 1000)
    den = Denoiser(Net(), process, name)
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    t = process.t_from_sigma(sigma)
    x_t, _ = process.q_sample(x0, t, noise=eps)  # continuous t: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
    via_sigma = den.at_sigma(x0 + sigma[:, None] * eps, sigma)
    direct = den(x_t, t)
    torch.testing.assert_close(via_sigma.x0, direct.x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(via_sigma.eps, direct.eps, rtol=1e-5, atol=1e-5)


class HalfStepSampler(Sampler):
    """A test-only sampler that evaluates the denoiser twice per step, the second time at a
    fractional timestep: the interface must allow it (Heun-style), and the loop counts NFE."""

    name = "half_step"
    calls: list

    def coefficients(self, abar_t, abar_prev):
        return {}

    def sample_step(self, denoise, x, i, generator=None):
        t = float(self.timesteps[i])
        t_prev = float(self.prev_timesteps[i])
        first = denoise(x, torch.full((x.shape[0],), t))
        half = denoise(x, torch.full((x.shape[0],), max(t_prev, 0.0) + 0.5))
        self.calls.append((t, max(t_prev, 0.0) + 0.5))
        x0 = (first.x0 + half.x0) / 2
        abar_prev = float(self.process.alphas_cumprod[int(t_prev)]) if t_prev >= 0 else 1.0
        return StepOutput(abar_prev**0.5 * x0 + (1 - abar_prev) ** 0.5 * first.eps, x0)


def test_a_sampler_can_call_the_denoiser_twice_at_fractional_times():
    process = DiffusionProcess("linear", 100)
    seen = []

    def net(x, t):
        seen.append(t.clone())
        return 0.1 * x

    s = HalfStepSampler(process)
    s.calls = []
    out = sample(Denoiser(net, process, "epsilon"), s, (3, 2), num_steps=5, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 10 == len(seen) and len(s.calls) == 5
    assert any(t.is_floating_point() and float(t[0]) % 1 == 0.5 for t in seen)
    assert torch.isfinite(out.samples).all()


def test_nfe_counts_the_network_evaluations():
    process = DiffusionProcess("linear", 100)
    calls = []

    def net(x, t):
        calls.append(1)
        return 0.1 * x

    out = sample(net, process, "epsilon", DDIMSampler(process), (2, 3), num_steps=7)
    assert out.nfe == 7 == len(calls)
    calls.clear()
    out = sample(net, process, "epsilon", DDPMSampler(process), image=torch.zeros(2, 3), strength=0.5, num_steps=10)
    assert out.nfe == 5 == len(calls)


def test_loss_options_reach_the_loss_huber_delta_included():
    process = DiffusionProcess("linear", 50)
    param = get_parameterization("epsilon")
    out, target, t = torch.randn(4, 3) * 3, torch.zeros(4, 3), torch.tensor([1, 2, 3, 4])
    small = DiffusionLoss(type="huber", huber_delta=0.1)(process, param, out, target, t)
    expected = F.huber_loss(out, target, reduction="none", delta=0.1).mean(1)
    torch.testing.assert_close(small, expected)
    assert not torch.allclose(small, DiffusionLoss(type="huber")(process, param, out, target, t))
    with pytest.raises(ValueError, match=r"unknown loss option\(s\) \['gama'\]"):
        DiffusionLoss.from_spec({"type": "mse", "gama": 3})
    with pytest.raises(ValueError, match="huber_delta must be > 0"):
        DiffusionLoss(type="huber", huber_delta=0)


def test_module_takes_the_loss_group_and_the_older_loss_arguments():
    net = {"_target_": "ddpm_lightning.networks.mlp.MLPDenoiser", "dim": 2, "hidden": 8, "depth": 1}
    new = DiffusionModule(net, loss={"name": "min_snr", "type": "mse", "weighting": "min_snr", "min_snr_gamma": 3.0}, data_shape=(2,))
    old = DiffusionModule(net, loss_type="mse", loss_weighting="min_snr", min_snr_gamma=3.0, data_shape=(2,))
    assert new.loss_fn == old.loss_fn == DiffusionLoss(weighting="min_snr", min_snr_gamma=3.0)
    assert new.hparams.loss == old.hparams.loss and "loss_type" not in new.hparams


def test_a_checkpoint_written_before_the_redesign_loads_and_samples_identically():
    module = DiffusionModule.load_from_checkpoint(FIXTURES / "pre_denoiser.ckpt", map_location="cpu", weights_only=False)
    expected = torch.load(FIXTURES / "pre_denoiser_samples.pt")
    noise = expected["noise"]
    # its hyperparameters used `schedule:` and loss_type / loss_weighting / min_snr_gamma
    assert module.process.config["name"] == "cosine" and module.loss_fn.weighting == "min_snr"
    # bit-identical on the CPU that wrote the fixture (an AMD EPYC); other CPU models' float32
    # kernels round differently: measured 1.2e-7 at most on an Intel Xeon. A wrong conversion of
    # the old hyperparameters (schedule, weighting, sampler) moves the samples far more than 1e-6.
    same = functools.partial(torch.testing.assert_close, rtol=0, atol=1e-6)
    same(module.sample(noise=noise, sampler="ddim", num_steps=10).samples, expected["ddim"])
    ddpm = module.sample(noise=noise, sampler={"name": "ddpm", "num_steps": 10, "spacing": "leading"},
                         generator=torch.Generator().manual_seed(2)).samples
    same(ddpm, expected["ddpm"])
    same(module.sample(noise=noise, sampler="dpmpp_2m", num_steps=8).samples, expected["dpmpp_2m"])
    same(module.sample(noise=noise).samples, expected["default"])
