"""Bits per dimension: the closed forms, an oracle model whose bound is known exactly, and a
trained model beating an untrained one on 8x8 digits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_lightning.likelihood import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_bpd,
    quantize_8bit,
    timestep_blocks,
)
from ddpm_lightning.module import DiffusionModule
from ddpm_lightning.networks import MLPDenoiser
from ddpm_lightning.process import DiffusionProcess

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 pixel levels in [-1, 1]


def test_normal_kl_closed_form():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    ours = normal_kl(m1, lv1, m2, lv2)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(ours, ref)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-15  # round-off of -1 + exp(0) + ... only
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2
    assert float(normal_kl(0.0, 0.0, 1.0, math.log(4.0))) == pytest.approx(math.log(2) + 0.25 - 0.5)


@pytest.mark.parametrize(("mean", "std"), [(0.0, 0.1), (0.3, 0.01), (-0.99, 0.5), (1.7, 0.05), (0.0, 1e-4), (-3.0, 2.0)])
def test_discretized_likelihood_is_a_distribution_over_the_256_levels(mean, std):
    x = LEVELS
    log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(std)))
    assert torch.isfinite(log_p).all() and (log_p <= 0).all()
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_discretized_likelihood_of_an_interior_level():
    x = LEVELS[100:101]  # one interior level
    std = 0.02
    ref = torch.special.ndtr((1 / 255) / torch.tensor(std, dtype=torch.float64)) * 2 - 1  # mean at the level
    log_p = discretized_gaussian_log_likelihood(x, x.clone(), torch.full_like(x, math.log(std)))
    assert float(log_p) == pytest.approx(math.log(float(ref)), rel=1e-9)


def test_timestep_blocks():
    starts, stops = timestep_blocks(100)
    assert torch.equal(starts, torch.arange(100)) and torch.equal(stops, torch.arange(1, 101))
    for k in (2, 3, 10, 37, 99):
        starts, stops = timestep_blocks(100, k)
        assert len(starts) == k and starts[0] == 0 and stops[0] == 1  # the decoder term alone
        assert torch.equal(starts[1:], stops[:-1]) and stops[-1] == 100  # contiguous, covering 1..99
        assert ((stops - starts) >= 1).all()
    assert len(timestep_blocks(100, 1000)[0]) == 100  # K >= T: exact
    with pytest.raises(ValueError, match=">= 2"):
        timestep_blocks(100, 1)


def test_prior_term_vanishes_for_a_schedule_that_reaches_noise():
    process = DiffusionProcess("cosine", 1000)
    x0 = quantize_8bit(torch.rand(3, 1, 4, 4) * 2 - 1)
    assert float(prior_bpd(process, x0).max()) < 1e-4
    short = DiffusionProcess("linear", 10)  # abar_T ~ 0.9: the prior term is large
    assert float(prior_bpd(short, x0).min()) > 0.01


class OracleX0(nn.Module):
    """Predicts the one training image exactly (x0 parameterization)."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.register_buffer("image", image)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t):
        return self.image.expand_as(x_t) + 0 * self.dummy


def test_oracle_model_has_zero_kl_and_the_closed_form_decoder_term():
    g = torch.Generator().manual_seed(0)
    image = quantize_8bit(torch.rand(1, 1, 4, 4, generator=g) * 2 - 1)
    image[0, 0, 0, 0], image[0, 0, 0, 1] = -1.0, 1.0  # the two edge bins too
    module = DiffusionModule(OracleX0(image[0]), schedule={"schedule": "linear", "num_timesteps": 50},
                             parameterization="x0", data_shape=(1, 4, 4))
    res = bits_per_dim(module, image.repeat(3, 1, 1, 1), progress=False)
    assert res["exact"] and res["num_images"] == 3 and res["num_dims"] == 16 and len(res["terms_bpd"]) == 50
    assert max(abs(v) for v in res["terms_bpd"][1:]) < 1e-5  # x0_hat = x0: every KL term is 0
    # decoder: N(x0, beta tilde_1) integrated over x0's bin (the edge bins are half-infinite)
    std = math.exp(0.5 * float(module.process.posterior_log_variance_clipped[0]))
    h = (1 / 255) / std
    interior = math.log(math.erf(h / math.sqrt(2)))
    edge = math.log(0.5 * (1 + math.erf(h / math.sqrt(2))))
    expected = -(14 * interior + 2 * edge) / 16 / math.log(2)
    assert res["decoder_bpd"] == pytest.approx(expected, rel=1e-4)
    assert res["bpd"] == pytest.approx(res["prior_bpd"] + res["decoder_bpd"] + res["kl_bpd"], rel=1e-6)
    assert res["bpd_stderr"] < 1e-6  # the same image three times


class FlatMLP(nn.Module):
    """The package's MLP denoiser on flattened images: trains in seconds on a CPU."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = MLPDenoiser(dim=dim, hidden=128, depth=2)

    def forward(self, x, t):
        return self.mlp(x.flatten(1), t).view_as(x)


def _tiny_module() -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule(FlatMLP(64), schedule={"schedule": "cosine", "num_timesteps": 100}, data_shape=(1, 8, 8))


@pytest.mark.slow  # ~35 s on an idle 2-core machine
def test_trained_model_has_lower_bpd_than_untrained():
    from ddpm_lightning.data import DigitsDataModule

    dm = DigitsDataModule(image_size=8, val_fraction=0.1)  # 8x8 digits: a 64-d image
    train, val = dm.real_samples(1600, "train"), dm.real_samples(64, "val")
    untrained, trained = _tiny_module(), _tiny_module()
    opt = torch.optim.Adam(trained.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, _ = trained.loss_per_sample(train[torch.randint(0, len(train), (128,), generator=g)])
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    # clipped x0_hat, as improved-diffusion's image_nll.py (our default became unclipped: an
    # untrained model's unclipped bound is in the hundreds of bits)
    before = bits_per_dim(untrained, val, progress=False, clip_denoised=True)  # exact: all 100 terms
    after = bits_per_dim(trained, val, progress=False, clip_denoised=True)
    for res in (before, after):
        assert all(math.isfinite(res[k]) for k in ("bpd", "prior_bpd", "vb_bpd", "decoder_bpd", "kl_bpd"))
        assert res["exact"] and 0 < res["bpd"] < 8.5  # 8 bits/dim: a uniform guess over 256 levels
    assert before["prior_bpd"] == pytest.approx(after["prior_bpd"])  # no network in L_T
    # measured: 7.50 -> 6.54 bits/dim, standard errors 0.06 (the decoder alone costs ~2.6 bits:
    # sqrt(beta tilde_1) of this T=100 schedule is ~5 times the width of a pixel level)
    assert after["bpd"] < before["bpd"] - 0.5, (before["bpd"], after["bpd"])
    # the stratified estimate from 20 terms agrees with the exact sum within its error
    estimate = bits_per_dim(trained, val, num_timesteps=20, progress=False, clip_denoised=True)
    assert not estimate["exact"] and len(estimate["terms_bpd"]) == 20
    assert abs(estimate["bpd"] - after["bpd"]) < 4 * estimate["bpd_stderr"]
    fixed_large = bits_per_dim(trained, val, variance="fixed_large", num_timesteps=20, progress=False, clip_denoised=True)
    assert math.isfinite(fixed_large["bpd"]) and fixed_large["bpd"] != estimate["bpd"]


def test_bits_per_dim_input_errors():
    module = _tiny_module()
    with pytest.raises(ValueError, match="2-D points"):
        bits_per_dim(module, torch.zeros(4, 2), progress=False)
    with pytest.raises(ValueError, match="variance"):
        bits_per_dim(module, torch.zeros(4, 1, 8, 8), variance="learned", progress=False)
    with pytest.raises(ValueError, match="empty"):
        bits_per_dim(module, [], progress=False)
    loader = torch.utils.data.DataLoader(torch.zeros(10, 1, 8, 8), batch_size=4)
    res = bits_per_dim(module, loader, num_timesteps=2, max_images=6, progress=False)
    assert res["num_images"] == 6
