"""Classifier-free guidance on the Prediction against diffusers' formula on the model output."""

import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg

from ddpm_lightning import Denoiser
from ddpm_lightning.guidance import ClassifierFreeGuidance
from ddpm_lightning.process import DiffusionProcess

NULL = 10  # the null class of a 10-class model


class ClassNet(torch.nn.Module):
    """A conditional toy network: a different function of x_t per class label; counts calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        c = cond["class"].float().reshape(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(x * (1 + c / 10)) + 0.01 * t.float().reshape(c.shape) + c / 20


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 1, 4, 4, generator=g), torch.tensor([0, 10, 50, 80, 99]), torch.tensor([0, 3, 7, 7, 9])


@pytest.mark.parametrize("parameterization", ["epsilon", "v", "x0"])
@pytest.mark.parametrize("w, phi", [(3.0, 0.0), (7.5, 0.7), (2.0, 1.0)])
def test_guided_prediction_equals_diffusers_formula(parameterization, w, phi):
    process = DiffusionProcess("cosine", 100)
    net = ClassNet()
    den = Denoiser(net, process, parameterization)
    x, t, labels = _inputs()
    guided = ClassifierFreeGuidance(den, w, lambda c: {"class": NULL}, rescale=phi)(x, t, {"class": labels})
    assert net.calls == [10]  # one batched forward of the conditional and unconditional inputs
    # diffusers: guidance (and guidance_rescale) on the raw model output (noise, v, or sample)
    out_c = net(x, t, {"class": labels})
    out_u = net(x, t, {"class": torch.full_like(labels, NULL)})
    out = out_u + w * (out_c - out_u)
    if phi:
        out = rescale_noise_cfg(out, out_c, guidance_rescale=phi)
    expected = den.parameterization.predict(process, x, t, out)
    torch.testing.assert_close(guided.x0, expected.x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided.eps, expected.eps, rtol=1e-5, atol=1e-5)


def test_scale_one_is_conditional_and_zero_unconditional_exactly():
    process = DiffusionProcess("linear", 100)
    net = ClassNet()
    den = Denoiser(net, process, "epsilon")
    x, t, labels = _inputs()
    cond = {"class": labels}
    one = ClassifierFreeGuidance(den, 1.0, lambda c: {"class": torch.full_like(labels, NULL)})(x, t, cond)
    zero = ClassifierFreeGuidance(den, 0.0, lambda c: {"class": torch.full_like(labels, NULL)})(x, t, cond)
    assert torch.equal(one.eps, den(x, t, cond).eps) and torch.equal(zero.eps, den(x, t, {"class": torch.full_like(labels, NULL)}).eps)
    assert net.calls == [5, 5, 5, 5]  # no unneeded pass


def test_guidance_works_with_a_sampler_and_bad_values_are_one_line():
    from ddpm_lightning import DDIMSampler
    from ddpm_lightning.sampling import sample

    process = DiffusionProcess("linear", 100)
    den = Denoiser(ClassNet(), process, "v")
    guided = ClassifierFreeGuidance(den, 3.0, lambda c: {"class": NULL})
    out = sample(guided, DDIMSampler(process), (4, 1, 4, 4), cond={"class": torch.tensor(7)}, num_steps=5)
    assert torch.isfinite(out.samples).all() and out.nfe == 5
    with pytest.raises(ValueError, match=r"guidance scale must be a number >= 0 .* got -1"):
        ClassifierFreeGuidance(den, -1, lambda c: c)
    with pytest.raises(ValueError, match=r"guidance_rescale must be in \[0, 1\], got 1.5"):
        ClassifierFreeGuidance(den, 2, lambda c: c, rescale=1.5)
    with pytest.raises(ValueError, match="needs the conditioning inputs"):
        guided(torch.zeros(2, 1, 4, 4), 3)
