"""The sampling loop end to end: an exact denoiser for Gaussian data, determinism, img2img,
inpainting, trajectories and bad input."""

import pytest
import torch

from ddpm_lightning.parameterizations import PARAMETERIZATIONS, Prediction, get_parameterization
from ddpm_lightning.process import DiffusionProcess, extract
from ddpm_lightning.samplers import DDIMSampler, DDPMSampler
from ddpm_lightning.sampling import sample

M, S = 0.7, 0.4  # the data distribution N(M, S^2)


def gaussian_oracle(process, param):
    """The exact network for x_0 ~ N(M, S^2): with a = sqrt(abar), s^2 = 1 - abar,
    E[x_0 | x_t] = M + a S^2 (x_t - a M) / (a^2 S^2 + s^2); E[eps | x_t] follows from eq. 4."""

    def model(x_t, t):
        a = extract(process.sqrt_alphas_cumprod, t, x_t.shape).double()
        var_t = a**2 * S**2 + (1 - a**2)
        x0 = M + a * S**2 * (x_t.double() - a * M) / var_t
        eps = process.eps_from_x0(x_t.double(), t, x0)
        return param.from_prediction(process, x_t.double(), t, Prediction(x0, eps)).float()

    return model


SAMPLER_CASES = [
    ("ddpm full", lambda p: DDPMSampler(p), None),
    ("ddpm respaced", lambda p: DDPMSampler(p, spacing="trailing"), 100),
    ("ddpm large variance", lambda p: DDPMSampler(p, variance="fixed_large"), None),
    ("ddim eta=0", lambda p: DDIMSampler(p, eta=0.0), 50),
    ("ddim eta=1", lambda p: DDIMSampler(p, eta=1.0), 100),
]


@pytest.mark.parametrize("param", list(PARAMETERIZATIONS))
@pytest.mark.parametrize("case, make, steps", SAMPLER_CASES, ids=[c[0] for c in SAMPLER_CASES])
def test_exact_denoiser_recovers_the_data_distribution(param, case, make, steps):
    process = DiffusionProcess("cosine", 1000)
    p = get_parameterization(param)
    out = sample(gaussian_oracle(process, p), process, p, make(process), (4000, 2),
                 num_steps=steps, generator=torch.Generator().manual_seed(0))
    x = out.samples.double()
    # sampling error of the mean is S / sqrt(8000) = 0.0045; of the std about 0.0032
    assert abs(x.mean() - M) < 0.02, (case, x.mean())
    assert abs(x.std() - S) < 0.02, (case, x.std())


def test_an_off_by_one_timestep_is_caught():
    """The oracle test must be sensitive: a model that is told t-1 instead of t fails it."""
    process = DiffusionProcess("cosine", 1000)
    p = get_parameterization("epsilon")
    good = gaussian_oracle(process, p)

    def shifted(x, t):
        return good(x, (t - 1).clamp(min=0))

    def error(model):
        x = sample(model, process, p, DDIMSampler(process), (4000, 2), num_steps=50,
                   generator=torch.Generator().manual_seed(0)).samples
        return max(abs(x.mean() - M), abs(x.std() - S))

    assert error(good) < 0.02
    assert error(shifted) > 0.1


def test_same_generator_same_samples_and_trajectory_shapes():
    process = DiffusionProcess("linear", 100)
    net = lambda x, t: 0.1 * x  # noqa: E731
    kw = dict(num_steps=10, return_trajectory=True)
    a = sample(net, process, "epsilon", DDPMSampler(process), (3, 1, 4, 4), generator=torch.Generator().manual_seed(5), **kw)
    b = sample(net, process, "epsilon", DDPMSampler(process), (3, 1, 4, 4), generator=torch.Generator().manual_seed(5), **kw)
    c = sample(net, process, "epsilon", DDPMSampler(process), (3, 1, 4, 4), generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    assert a.trajectory.shape == (11, 3, 1, 4, 4) and a.x0_trajectory.shape == (10, 3, 1, 4, 4)
    assert torch.equal(a.trajectory[-1], a.samples)
    assert not a.samples.requires_grad and a.samples.is_inference()


def test_img2img_small_strength_stays_close():
    process = DiffusionProcess("cosine", 1000)
    p = get_parameterization("epsilon")
    image = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # a denoiser that believes the image is the data: E[eps | x_t] for x_0 = image
    def net(x_t, t):
        return process.eps_from_x0(x_t, t, image)

    for strength, tol in [(0.05, 0.1), (0.5, 0.5)]:
        out = sample(net, process, p, DDIMSampler(process), image=image, strength=strength,
                     num_steps=50, generator=torch.Generator().manual_seed(1))
        assert len(out.timesteps) == int(50 * strength)
        assert (out.samples - image).abs().max() < tol
    # with a useless network, small strength still stays near the input: few, low-noise steps
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    out = sample(zero, process, p, DDIMSampler(process), image=image, strength=0.02, num_steps=50)
    assert (out.samples - image).abs().mean() < 0.1


@pytest.mark.parametrize("sampler_cls", [DDPMSampler, DDIMSampler])
def test_inpainting_keeps_the_known_region(sampler_cls):
    process = DiffusionProcess("linear", 200)
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1  # generate the centre, keep the border
    net = lambda x, t: 0.5 * x  # noqa: E731
    out = sample(net, process, "epsilon", sampler_cls(process), image=image, mask=mask,
                 num_steps=20, generator=torch.Generator().manual_seed(0))
    keep = mask.expand_as(image) == 0
    assert torch.equal(out.samples[keep], image[keep])
    assert not torch.allclose(out.samples[~keep], image[~keep])


def test_bad_loop_input():
    process = DiffusionProcess("linear", 50)
    s = DDIMSampler(process)
    net = lambda x, t: x  # noqa: E731
    image = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"mask of shape \(1, 1, 3, 3\) does not broadcast"):
        sample(net, process, "epsilon", s, image=image, mask=torch.ones(1, 1, 3, 3))
    for strength in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match="strength must be in"):
            sample(net, process, "epsilon", s, image=image, strength=strength)
    with pytest.raises(ValueError, match=r"\[1, 50\]"):
        sample(net, process, "epsilon", s, (2, 3), num_steps=51)
    with pytest.raises(ValueError, match="needs the image"):
        sample(net, process, "epsilon", s, (2, 3), mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="parameterization"):
        sample(net, process, "eps", s, (2, 3))
