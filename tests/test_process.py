"""Forward process and posterior: closed form vs iteration, DDPM eq. 7, noise at x_T."""

import pytest
import torch

from ddpm_lightning.process import DiffusionProcess, extract
from ddpm_lightning.schedules import SCHEDULES


def test_single_steps_match_closed_form_jump():
    """x_0 pushed through t single steps q(x_t|x_{t-1}) has q(x_t|x_0)'s mean and variance."""
    p = DiffusionProcess("linear", 1000, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 4000
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    x = x0
    checkpoints = {0, 9, 99, 499, 999}
    for t in range(1000):
        x, _ = p.q_step(x, torch.full((n,), t), generator=g)
        if t in checkpoints:
            mean = p.sqrt_alphas_cumprod[t] * 1.5
            var = 1 - p.alphas_cumprod[t]
            se_mean = (var / n).sqrt()
            assert abs(x.mean() - mean) < 4 * se_mean + 1e-12
            # the sample variance has standard error var * sqrt(2 / n)
            assert abs(x.var() - var) < 4 * var * (2 / n) ** 0.5


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_x_T_is_standard_normal(name):
    p = DiffusionProcess(name, 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4000, 4, generator=g) * 2 - 1
    x_T, _ = p.q_sample(x0, torch.full((4000,), 999), generator=g)
    tol = 0.1 if name == "scaled_linear" else 0.05  # SD's schedule keeps sqrt(abar_T) ~ 0.07
    assert abs(x_T.mean()) < tol and abs(x_T.std() - 1) < tol


def test_q_sample_returns_its_noise():
    p = DiffusionProcess("cosine", 100)
    x0 = torch.randn(8, 3, 4, 4)
    t = torch.randint(0, 100, (8,))
    x_t, noise = p.q_sample(x0, t)
    a, s = extract(p.sqrt_alphas_cumprod, t, x0.shape), extract(p.sqrt_one_minus_alphas_cumprod, t, x0.shape)
    torch.testing.assert_close(x_t, a * x0 + s * noise)
    x1, n1 = p.q_step(x0, t)
    torch.testing.assert_close(x1, extract(p.alphas, t, x0.shape).sqrt() * x0 + extract(p.betas, t, x0.shape).sqrt() * n1)


@pytest.mark.parametrize("t", [0, 1, 10, 500, 999])
def test_posterior_matches_ddpm_eq7(t):
    p = DiffusionProcess("linear", 1000, dtype=torch.float64)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    x0, x_t = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    tt = torch.full((5,), t)
    mean, var, log_var = p.q_posterior(x0, x_t, tt)
    want_mean = abar_prev.sqrt() * betas[t] / (1 - abar[t]) * x0 + (1 - betas[t]).sqrt() * (1 - abar_prev) / (1 - abar[t]) * x_t
    want_var = (1 - abar_prev) / (1 - abar[t]) * betas[t]
    torch.testing.assert_close(mean, want_mean, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(var, want_var.expand(5, 1), atol=1e-15, rtol=1e-10)
    if t > 0:
        torch.testing.assert_close(log_var, want_var.log().expand(5, 1), atol=1e-12, rtol=1e-10)
    assert torch.isfinite(log_var).all()  # t = 0 is clipped, not -inf


def test_posterior_is_the_bayes_posterior():
    """Bayes: q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0); check the Gaussian product directly."""
    p = DiffusionProcess("cosine", 50, dtype=torch.float64)
    t = 20
    x0, x_t = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.3]], dtype=torch.float64)
    a_t, ab_prev = p.alphas[t], p.alphas_cumprod[t - 1]
    # precisions add; means are precision-weighted
    prec = a_t / p.betas[t] + 1 / (1 - ab_prev)
    mean = (a_t.sqrt() / p.betas[t] * x_t + ab_prev.sqrt() / (1 - ab_prev) * x0) / prec
    m, v, _ = p.q_posterior(x0, x_t, torch.tensor([t]))
    torch.testing.assert_close(m, mean)
    torch.testing.assert_close(v, (1 / prec).reshape(1, 1))
