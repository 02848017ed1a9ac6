"""Guidance end to end with an exact conditional denoiser: data from a mixture of Gaussians with
known class means, whose class-conditional and unconditional E[x0 | x_t] are closed form.
Sampling class c (w = 1) through every sampler and parameterization gives mean m_c and std S;
w = 0 is the unconditional oracle exactly; w > 1 sharpens the class."""

import pytest
import torch

from ddpm_lightning import Denoiser
from ddpm_lightning.sampling import sample
from ddpm_lightning.guidance import ClassifierFreeGuidance
from ddpm_lightning.module import sampler_preset
from ddpm_lightning.parameterizations import PARAMETERIZATIONS, Prediction, get_parameterization
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers import SAMPLERS, get_sampler

MEANS = torch.tensor([[1.5, 0.0], [-1.0, 1.0], [-0.5, -1.5]], dtype=torch.float64)  # m_c, K = 3
S = 0.3
NULL = len(MEANS)


def mixture_oracle(process, param):
    """network(x_t, t, cond): the exact output for class cond["class"] (NULL: unconditional).
    With a = sqrt(abar), v = a^2 S^2 + 1 - a^2: E[x0 | x_t, c] = m_c + a S^2 (x_t - a m_c) / v and
    p(c | x_t) proportional to N(x_t; a m_c, v I) (equal class priors)."""

    def network(x_t, t, cond):
        x = x_t.double()
        a = process.at("sqrt_alphas_cumprod", t, x.shape).double()
        v = a**2 * S**2 + 1 - a**2
        per_class = MEANS[None] + (a * S**2 / v)[..., None] * (x[:, None] - a[..., None] * MEANS[None])  # (B, K, 2)
        log_w = -((x[:, None] - a[..., None] * MEANS[None]) ** 2).sum(-1) / (2 * v)  # (B, K)
        uncond = (log_w.softmax(-1)[..., None] * per_class).sum(1)
        labels = torch.as_tensor(cond["class"]).expand(x.shape[0])
        x0 = torch.where((labels == NULL)[:, None], uncond, per_class[torch.arange(x.shape[0]), labels.clamp(max=NULL - 1)])
        eps = process.eps_from_x0(x, t, x0)
        return param.from_prediction(process, x, t, Prediction(x0, eps)).float()

    return network


SIGMA_SPACE = ("euler", "euler_ancestral", "heun", "dpmpp_2m_sde")
SAMPLER_NAMES = sorted(name for name in SAMPLERS if name not in ("diffusers", "dpm_solver++"))


def _sampler(process, name):
    spec = sampler_preset(name)
    spec.pop("name")
    steps = spec.pop("num_steps", None)
    spec["clip_denoised"] = False
    return get_sampler(name, process, **spec), steps


FAST = {("v", "ddim"), ("epsilon", "ddpm")}  # in the default suite; the whole matrix runs with -m slow
CASES = [pytest.param(p, n, marks=() if (p, n) in FAST else pytest.mark.slow) for p in PARAMETERIZATIONS for n in SAMPLER_NAMES]


@pytest.mark.parametrize("param, name", CASES)
def test_guidance_one_samples_the_class_and_zero_the_mixture(param, name):
    process = DiffusionProcess("cosine", 1000)
    den = Denoiser(mixture_oracle(process, get_parameterization(param)), process, param)
    sampler, steps = _sampler(process, name)
    if name in SIGMA_SPACE:  # Karras sigmas over the cosine range (sigma_max ~ 2e4) need more steps
        steps = 200           # than the presets' to be this accurate (tests/test_sigma_samplers.py)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))

    def run(w, c):
        guided = ClassifierFreeGuidance(den, w, lambda cond: {"class": NULL})
        return sample(guided, sampler, noise=noise, cond={"class": torch.tensor(c)}, num_steps=steps,
                      generator=torch.Generator().manual_seed(1)).samples.double()

    x = run(1.0, 1)
    # 2000 samples: the mean's sampling error is S / sqrt(2000) = 0.0067 per coordinate
    assert (x.mean(0) - MEANS[1]).abs().max() < 0.03, (name, param, x.mean(0))
    assert (x.std(0) - S).abs().max() < 0.03, (name, param, x.std(0))
    unguided = sample(den, sampler, noise=noise, cond={"class": torch.tensor(NULL)}, num_steps=steps,
                      generator=torch.Generator().manual_seed(1)).samples.double()
    assert torch.equal(run(0.0, 1), unguided)
    # the mixture: every class about equally often
    nearest = torch.cdist(unguided, MEANS).argmin(1)
    assert (torch.bincount(nearest, minlength=3).double() / len(nearest) - 1 / 3).abs().max() < 0.05


def test_strong_guidance_sharpens_the_class():
    process = DiffusionProcess("cosine", 1000)
    den = Denoiser(mixture_oracle(process, get_parameterization("epsilon")), process, "epsilon")
    sampler, steps = _sampler(process, "ddim")
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    outs = {w: sample(ClassifierFreeGuidance(den, w, lambda c: {"class": NULL}), sampler, noise=noise,
                      cond={"class": torch.tensor(0)}, num_steps=steps).samples.double() for w in (1.0, 4.0)}
    centre = MEANS.mean(0)
    # w > 1 pushes class 0 away from the other classes and narrows it (Ho & Salimans 2022, fig. 2)
    assert (outs[4.0].mean(0) - centre).norm() > (outs[1.0].mean(0) - centre).norm()
    assert outs[4.0].std(0).max() < outs[1.0].std(0).min()
