"""Learned variance, the hybrid and vlb losses, importance-sampled timesteps, and respacing
(Nichol & Dhariwal 2021), against improved-diffusion's formulas.

openai/improved-diffusion is not on PyPI: the reference values below are computed here
independently, in float64 numpy, from the formulas of their code (gaussian_diffusion.py
`p_mean_variance` / `_vb_terms_bpd` / `training_losses`, losses.py, respace.py, resample.py)."""

import math

import numpy as np
import pytest
import torch

from ddpm_lightning import DDPMSampler, Denoiser, DiffusionLoss, DiffusionModule
from ddpm_lightning.likelihood import bits_per_dim
from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.timestep_samplers import LossSecondMomentSampler
from ddpm_lightning.vlb import discretized_gaussian_log_likelihood, vb_terms_from_prediction

T = 100


def ref_schedule(process):
    betas = process.betas.double().numpy()
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_log_var_clipped = np.log(np.append(post_var[1], post_var[1:]))
    coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
    coef2 = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
    return dict(betas=betas, abar=abar, post_var=post_var, post_log_var_clipped=post_log_var_clipped, coef1=coef1, coef2=coef2)


def ref_log_var_learned_range(ref, t, v):
    frac = (v + 1) / 2
    return frac * np.log(ref["betas"])[t] + (1 - frac) * ref["post_log_var_clipped"][t]


def ref_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def ref_decoder_log_likelihood(x, means, log_scales):
    centered = x - means
    inv_stdv = np.exp(-log_scales)
    cdf_plus = ref_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = ref_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    log_delta = np.log(np.maximum(cdf_plus - cdf_min, 1e-12))
    return np.where(x < -0.999, log_cdf_plus, np.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def ref_normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))


def ref_vb_term_bpd(ref, x0, x_t, t, eps_out, v_out):
    """_vb_terms_bpd for an epsilon model with a learned-range variance, clip_denoised=False."""
    b = x0.shape[0]
    sl = lambda a: a[t].reshape(b, *([1] * (x0.ndim - 1)))  # noqa: E731
    abar = sl(ref["abar"])
    x0_hat = x_t / np.sqrt(abar) - np.sqrt(1 / abar - 1) * eps_out
    model_mean = sl(ref["coef1"]) * x0_hat + sl(ref["coef2"]) * x_t
    model_log_var = np.stack([ref_log_var_learned_range(ref, t[i], v_out[i]) for i in range(b)])
    true_mean = sl(ref["coef1"]) * x0 + sl(ref["coef2"]) * x_t
    true_log_var = sl(ref["post_log_var_clipped"])
    kl = ref_normal_kl(true_mean, true_log_var, model_mean, model_log_var).reshape(b, -1).mean(1) / np.log(2.0)
    nll = -ref_decoder_log_likelihood(x0, model_mean, 0.5 * model_log_var).reshape(b, -1).mean(1) / np.log(2.0)
    return np.where(t == 0, nll, kl)


class EpsAndV(torch.nn.Module):
    """A fixed network that outputs (eps, v): 2C channels."""

    def __init__(self, v: float | None = None):
        super().__init__()
        self.v = v
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t, cond=None):
        eps = torch.tanh(x) * self.w
        v = torch.full_like(x, self.v) if self.v is not None else torch.sin(3 * x)
        return torch.cat([eps, v], dim=1)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.randint(0, 256, (6, 1, 3, 3), generator=g).double() / 127.5 - 1)  # 8-bit levels
    t = torch.tensor([0, 1, 2, 40, 98, 99])
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0, t, noise


def test_learned_range_log_variance_and_vb_terms_equal_improved_diffusion():
    process = DiffusionProcess("cosine", T, dtype=torch.float64)
    ref = ref_schedule(process)
    x0, t, noise = _batch()
    x_t, _ = process.q_sample(x0, t, noise=noise)
    den = Denoiser(EpsAndV().double(), process, "epsilon", variance="learned_range")
    with torch.no_grad():
        out = den.network(x_t, t)
        pred = den(x_t, t)
    eps_out, v_out = out[:, :1].numpy(), out[:, 1:].numpy()
    expected_log_var = np.stack([ref_log_var_learned_range(ref, int(t[i]), v_out[i]) for i in range(6)])
    np.testing.assert_allclose(pred.log_var.numpy(), expected_log_var, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pred.var_frac.numpy(), (v_out + 1) / 2, rtol=0, atol=1e-12)
    with torch.no_grad():
        ours = vb_terms_from_prediction(process, x0, x_t, t, pred, cdf="tanh")
    theirs = ref_vb_term_bpd(ref, x0.numpy(), x_t.numpy(), t.numpy(), eps_out, v_out)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6, atol=1e-9)
    # the decoder of our exact-CDF default differs from the tanh approximation by ~1e-4 at most
    exact = vb_terms_from_prediction(process, x0, x_t, t, pred)
    assert abs(float(exact[0] - ours[0])) < 1e-3 and torch.equal(exact[1:], ours[1:])


def test_decoder_nll_equals_improved_diffusions_with_their_cdf():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (200,), generator=g).double() / 127.5 - 1
    means = x + 0.02 * torch.randn(200, generator=g, dtype=torch.float64)
    log_scales = -3 + torch.rand(200, generator=g, dtype=torch.float64)
    ours = discretized_gaussian_log_likelihood(x, means, log_scales, cdf="tanh")
    np.testing.assert_allclose(ours.numpy(), ref_decoder_log_likelihood(x.numpy(), means.numpy(), log_scales.numpy()), rtol=1e-9, atol=1e-12)


def test_hybrid_loss_is_l_simple_plus_rescaled_vb_with_the_mean_frozen():
    process = DiffusionProcess("cosine", T, dtype=torch.float64)
    ref = ref_schedule(process)
    x0, t, noise = _batch(1)
    x_t, _ = process.q_sample(x0, t, noise=noise)
    den = Denoiser(EpsAndV().double(), process, "epsilon", variance="learned_range")
    out = den.network(x_t, t).detach().requires_grad_(True)
    loss = DiffusionLoss(type="hybrid", decoder_cdf="tanh").training_loss(den, x0, x_t, noise, t, out)
    eps_out, v_out = out[:, :1].detach().numpy(), out[:, 1:].detach().numpy()
    mse = ((eps_out - noise.numpy()) ** 2).reshape(6, -1).mean(1)
    vb = ref_vb_term_bpd(ref, x0.numpy(), x_t.numpy(), t.numpy(), eps_out, v_out)
    np.testing.assert_allclose(loss.detach().numpy(), mse + vb * T / 1000.0, rtol=1e-6, atol=1e-9)  # RESCALED_MSE
    # the vb term trains only the variance: the mean's gradient is L_simple's alone
    loss.sum().backward()
    np.testing.assert_allclose(out.grad[:, :1].numpy(), 2 * (eps_out - noise.numpy()) / 9, rtol=1e-9, atol=1e-12)
    assert out.grad[:, 1:].abs().sum() > 0
    vlb = DiffusionLoss(type="vlb", decoder_cdf="tanh").training_loss(den, x0, x_t, noise, t, out.detach())
    np.testing.assert_allclose(vlb.numpy(), T * ref_vb_term_bpd(ref, x0.numpy(), x_t.numpy(), t.numpy(), eps_out, v_out),
                               rtol=1e-6, atol=1e-9)


def ref_space_timesteps(num_timesteps, count):
    frac_stride = (num_timesteps - 1) / (count - 1) if count > 1 else 1
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += frac_stride
    return sorted(set(taken))


@pytest.mark.parametrize("n", [10, 37, 100])
def test_respaced_betas_and_variances_equal_improved_diffusions(n):
    process = DiffusionProcess("cosine", 1000, dtype=torch.float64)
    abar = np.cumprod(1 - process.betas.numpy())
    use = ref_space_timesteps(1000, n)
    last, new_betas = 1.0, []
    for i in use:  # respace.py: SpacedDiffusion.__init__
        new_betas.append(1 - abar[i] / last)
        last = abar[i]
    new_betas = np.array(new_betas)
    new_abar = np.cumprod(1 - new_betas)
    new_abar_prev = np.append(1.0, new_abar[:-1])
    post_var = new_betas * (1 - new_abar_prev) / (1 - new_abar)
    post_log_clipped = np.log(np.append(post_var[1], post_var[1:]))
    sampler = DDPMSampler(process)
    ts = sampler.set_timesteps(n)
    assert sorted(ts.tolist()) == use
    coefs = sampler.coefficients(process.alphas_cumprod_f64[ts], torch.cat([process.alphas_cumprod_f64[ts[1:]], torch.ones(1, dtype=torch.float64)]))
    # our tables run from t = T-1 down; theirs from the first kept timestep up
    np.testing.assert_allclose(coefs["log_beta"].numpy()[::-1], np.log(new_betas), rtol=1e-6)
    np.testing.assert_allclose(coefs["log_small"].numpy()[::-1], post_log_clipped, rtol=1e-6)
    np.testing.assert_allclose(coefs["std"].numpy()[::-1][1:] ** 2, post_var[1:], rtol=1e-6)


def test_ddpm_step_uses_the_learned_variance_and_its_respaced_interpolation():
    process = DiffusionProcess("linear", T)
    sampler = DDPMSampler(process)
    sampler.set_timesteps(10)
    t = int(sampler.timesteps[3])
    x = torch.randn(4, 2)
    noise = torch.randn(4, 2)
    frac = torch.rand(4, 2)
    base = Prediction(torch.zeros(4, 2), torch.zeros(4, 2))
    fixed = sampler.step(x, t, base, noise=noise).prev_sample
    learned = sampler.step(x, t, base._replace(log_var=torch.zeros(4, 2), var_frac=frac), noise=noise).prev_sample
    log_var = frac * sampler.coef("log_beta", t) + (1 - frac) * sampler.coef("log_small", t)
    torch.testing.assert_close(learned - fixed, (torch.exp(0.5 * log_var) - sampler.coef("std", t)) * noise)
    # LEARNED (no fraction): the model's log-variance as it is, under respacing too
    direct = sampler.step(x, t, base._replace(log_var=torch.full((4, 2), -3.0)), noise=noise).prev_sample
    torch.testing.assert_close(direct - fixed, (math.exp(-1.5) - sampler.coef("std", t)) * noise)


def test_v_minus_one_is_fixed_small_in_sampling_and_bits_per_dim():
    """f = 0 makes log Sigma = log beta tilde: the learned model must equal the fixed one."""
    data_shape = (1, 4, 4)
    x0 = torch.randint(0, 256, (5, *data_shape), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1
    learned = DiffusionModule(EpsAndV(v=-1.0), schedule={"name": "linear", "num_timesteps": 50}, variance="learned_range",
                              loss={"type": "hybrid"}, data_shape=data_shape)
    fixed_net = lambda x, t: EpsAndV(v=-1.0)(x, t)[:, :1]  # noqa: E731  (the same mean, no variance channels)
    fixed = DiffusionModule(fixed_net, schedule={"name": "linear", "num_timesteps": 50}, data_shape=data_shape)
    a = bits_per_dim(learned, x0, progress=False)
    b = bits_per_dim(fixed, x0, progress=False)
    assert a["variance"] == "learned_range" and b["variance"] == "fixed_small"
    assert a["bpd"] == pytest.approx(b["bpd"], rel=1e-5)
    for n in (None, 10):  # all T steps, and respaced
        kw = dict(n=3, sampler={"name": "ddpm", "clip_denoised": False}, num_steps=n)
        sa = learned.sample(**kw, generator=torch.Generator().manual_seed(1)).samples
        sb = fixed.sample(**kw, generator=torch.Generator().manual_seed(1)).samples
        torch.testing.assert_close(sa, sb, rtol=1e-4, atol=1e-5)


def test_loss_second_moment_sampler_follows_improved_diffusions_rule():
    s = LossSecondMomentSampler(4, history=2, uniform_prob=0.1)
    assert torch.equal(s.weights(), torch.full((4,), 0.25, dtype=torch.float64)) and not s.warmed_up()
    s.update(torch.tensor([0, 0, 0, 1, 1, 2, 2, 3]), torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 1.0, 1.0, 9.0]))
    assert not s.warmed_up()  # t = 3 has one value
    s.update(torch.tensor([3]), torch.tensor([7.0]))
    assert s.warmed_up()
    hist = np.array([[2.0, 3.0], [4.0, 4.0], [1.0, 1.0], [9.0, 7.0]])  # t = 0 shifted out its oldest
    assert np.array_equal(s.loss_history.numpy(), hist)
    w = np.sqrt((hist**2).mean(-1))
    w = w / w.sum() * 0.9 + 0.1 / 4
    np.testing.assert_allclose(s.weights().numpy(), w, rtol=1e-12)
    torch.manual_seed(0)
    t, weights = s.draw(20000, "cpu")
    np.testing.assert_allclose(np.bincount(t.numpy(), minlength=4) / 20000, w, atol=0.015)
    np.testing.assert_allclose(weights.numpy(), 1 / (4 * w[t.numpy()]), rtol=1e-6)
    assert set(s.state_dict()) == {"loss_history", "loss_counts"}  # saved in checkpoints


def test_vlb_training_updates_the_history_and_weights_the_loss():
    module = DiffusionModule(EpsAndV(), schedule={"name": "linear", "num_timesteps": 20}, variance="learned",
                             loss={"type": "vlb"}, data_shape=(1, 3, 3))
    assert module.timestep_sampler is not None and "timestep_sampler.loss_history" in module.state_dict()
    x0 = torch.rand(8, 1, 3, 3) * 2 - 1
    module.train()
    loss, t = module.loss_per_sample(x0)
    assert int(module.timestep_sampler.loss_counts.sum()) == 8 and torch.isfinite(loss).all()
    module.eval()  # validation: uniform timesteps given by the caller, no update
    module.loss_per_sample(x0, t=torch.zeros(8, dtype=torch.long))
    assert int(module.timestep_sampler.loss_counts.sum()) == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variance="learned_range", loss={"type": "hybrid"}, net_out=1),
         r"the network outputs 1 channel\(s\) but 2 are needed: a learned variance needs 2 x 1"),
        (dict(variance="fixed", loss={"type": "hybrid"}), r"loss.type=hybrid trains a learned variance .* variance=fixed"),
        (dict(variance="fixed", loss={"type": "vlb"}), r"loss.type=vlb trains a learned variance"),
        (dict(variance="learned_range", loss={"type": "mse"}), r"variance=learned_range needs loss.type=hybrid or vlb"),
        (dict(variance="learned", loss={"type": "vlb", "weighting": "snr"}), r"loss.weighting must be none"),
        (dict(variance="learnt", loss={"type": "hybrid"}), r"unknown variance 'learnt'; choose one of \['fixed', 'learned', 'learned_range'\]"),
    ],
)
def test_bad_variance_and_loss_combinations_are_one_line(kwargs, message):
    out = kwargs.pop("net_out", 2)
    net = {"_target_": "ddpm_lightning.networks.UNet", "in_channels": None, "out_channels": out if out != 2 else None,
           "sample_size": None, "block_out_channels": [8, 8], "down_block_types": ["DownBlock2D", "DownBlock2D"],
           "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "layers_per_block": 1}
    with pytest.raises(ValueError, match=message):
        DiffusionModule(net, data_shape=(1, 8, 8), **kwargs)


def test_vb_losses_need_images():
    net = {"_target_": "ddpm_lightning.networks.MLPDenoiser", "dim": None, "out_dim": None, "hidden": 8, "depth": 1}
    with pytest.raises(ValueError, match=r"decoder term over 8-bit pixels: it needs images"):
        DiffusionModule(net, variance="learned_range", loss={"type": "hybrid"}, data_shape=(2,))


def test_networks_double_their_output_channels_for_a_learned_variance(make_cfg):
    from ddpm_lightning.train import build

    _, model, _ = build(make_cfg("variance=learned_range", "network.block_out_channels=[16,16,32]",
                                 "network.attention_head_dim=8", "network.norm_num_groups=8"))
    assert model.network.unet.config.out_channels == 2 and model.loss_fn.type == "hybrid"
    pred = model.denoiser(torch.randn(2, 1, 16, 16), torch.tensor([0, 999]))
    assert pred.log_var.shape == (2, 1, 16, 16)
    from ddpm_lightning.networks import MLPDenoiser, fill_shape_keys

    cfg = fill_shape_keys({"dim": None, "out_dim": None}, (2,), output_factor=2)
    assert cfg == {"dim": 2, "out_dim": 4} and MLPDenoiser(**cfg)(torch.randn(3, 2), torch.tensor([0, 1, 2])).shape == (3, 4)


@pytest.mark.slow
def test_learned_variance_benchmark_runs_at_smoke_size(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "lv.md"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "learned_variance.py"), "--smoke", "--markdown", str(out)],
                          cwd=root, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert "bits/dim" in table and "DDPM 5 steps" in table
