"""The numbers the JS samplers (ddpm_lightning/web/samplers.js) and the JS guidance
(ddpm_lightning/web/guidance.js) are checked against under Node: Python's timesteps, step
coefficients, single steps and guided steps (`ddpm_lightning.guidance.ClassifierFreeGuidance`),
written to tests/fixtures/web_samplers.json.

Regenerate with `python tests/web_sampler_numbers.py`; tests/test_web_samplers.py fails if the
committed file is stale."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ddpm_lightning.guidance import ClassifierFreeGuidance
from ddpm_lightning.parameterizations import Prediction
from ddpm_lightning.process import DiffusionProcess
from ddpm_lightning.samplers import get_sampler
from ddpm_lightning.samplers.base import SPACINGS, make_timesteps

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "web_samplers.json"
STEP_COUNTS = [1, 2, 3, 5, 7, 10, 20, 25, 33, 48, 50, 64, 100, 250, 333, 999, 1000]


def _list(x: torch.Tensor) -> list:
    return x.reshape(-1).tolist()


def _step_case(process, name: str, num_steps: int, index: int, seed: int, **options) -> dict:
    """One sampler step on seeded inputs (x_t, x0_hat, eps_hat, noise) of shape (2, 1, 4, 4)."""
    sampler = get_sampler(name, process, **options)
    sampler.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(seed)
    xt, x0, eps, noise = (torch.randn(2, 1, 4, 4, generator=g) for _ in range(4))
    x0 = x0 * 1.5  # some of x0_hat outside [-1, 1], so clipping matters
    t = int(sampler.timesteps[index])
    out = sampler.step(xt, t, Prediction(x0, eps), noise=noise)
    return {"name": name, "num_steps": num_steps, "index": index, "options": options, "t": t,
            "x_t": _list(xt), "x0": _list(x0), "eps": _list(eps), "noise": _list(noise),
            "prev": _list(out.prev_sample), "pred_x0": _list(out.pred_x0)}


NUM_CLASSES = 3  # the guided cases' labels are in [0, 3), the null class 3


def _guided_case(process, name: str, num_steps: int, index: int, seed: int, w: float, labels: list[int], **options) -> dict:
    """One guided sampler step: a stand-in network answers (x0, eps)_cond for rows with a class and
    (x0, eps)_uncond for rows with the null class; ClassifierFreeGuidance combines them (one
    batched call, as the page does) and the sampler steps with the result."""
    sampler = get_sampler(name, process, **options)
    sampler.set_timesteps(num_steps)
    g = torch.Generator().manual_seed(seed)
    shape = (len(labels), 1, 4, 4)
    xt, cx0, ceps, ux0, ueps, noise = (torch.randn(*shape, generator=g) for _ in range(6))
    cx0 = cx0 * 1.5  # some of x0_hat outside [-1, 1], so clipping matters
    calls = []

    def denoiser(x, t, cond):
        rows = cond["class"]
        calls.append(rows.tolist())
        null = (rows == NUM_CLASSES).reshape(-1, 1, 1, 1)
        tile = x.shape[0] // len(labels)  # 2 for the batched cond + uncond call
        return Prediction(torch.where(null, ux0.repeat(tile, 1, 1, 1), cx0.repeat(tile, 1, 1, 1)),
                          torch.where(null, ueps.repeat(tile, 1, 1, 1), ceps.repeat(tile, 1, 1, 1)))

    guided = ClassifierFreeGuidance(denoiser, w, lambda c: {"class": torch.full_like(c["class"], NUM_CLASSES)})
    t = int(sampler.timesteps[index])
    pred = guided(xt, t, {"class": torch.tensor(labels)})
    out = sampler.step(xt, t, pred, noise=noise)
    return {"name": name, "num_steps": num_steps, "index": index, "options": options, "t": t, "w": w,
            "labels": labels, "null_class": NUM_CLASSES, "network_calls": calls,
            "x_t": _list(xt), "cond_x0": _list(cx0), "cond_eps": _list(ceps), "uncond_x0": _list(ux0),
            "uncond_eps": _list(ueps), "noise": _list(noise), "guided_x0": _list(pred.x0), "guided_eps": _list(pred.eps),
            "prev": _list(out.prev_sample), "pred_x0": _list(out.pred_x0)}


def sampler_numbers() -> dict:
    process = DiffusionProcess(name="linear", num_timesteps=1000)
    timesteps = [
        {"T": T, "n": n, "spacing": s, "timesteps": make_timesteps(T, n, s).tolist()}
        for T in (1000, 50, 7) for s in SPACINGS for n in STEP_COUNTS if n <= T
    ]
    coefficients = []
    for name, n, options in [("ddim", 50, {"eta": 0.0}), ("ddim", 20, {"eta": 0.5, "spacing": "linspace"}),
                             ("ddim", 10, {"eta": 1.5, "spacing": "leading"}), ("ddpm", 100, {}),
                             ("ddpm", 1000, {"variance": "fixed_large"}), ("ddpm", 7, {"spacing": "trailing"})]:
        sampler = get_sampler(name, process, **options)
        ts = sampler.set_timesteps(n)
        keys = ("x0", "eps", "std") if name == "ddim" else ("x0", "xt", "std")
        coefficients.append({"name": name, "num_steps": n, "options": options, "timesteps": ts.tolist(),
                             **{k: sampler._coefs[k].tolist() for k in keys}})
    steps = [
        _step_case(process, "ddim", 50, 3, 0, eta=0.0, clip_denoised=True),
        _step_case(process, "ddim", 50, 49, 1, eta=0.0, clip_denoised=True),
        _step_case(process, "ddim", 20, 5, 2, eta=0.7, clip_denoised=True),
        _step_case(process, "ddim", 20, 5, 3, eta=0.0, clip_denoised=False),
        _step_case(process, "ddpm", 100, 10, 4, clip_denoised=True),
        _step_case(process, "ddpm", 100, 99, 5, clip_denoised=True),
    ]
    guided = [
        _guided_case(process, "ddim", 50, 3, 10, 2.0, [0, 2], eta=0.0, clip_denoised=True),
        _guided_case(process, "ddim", 20, 19, 11, 3.5, [1, 1, 0], eta=0.0, clip_denoised=True),
        _guided_case(process, "ddim", 20, 5, 12, 7.25, [2, 0], eta=0.0, clip_denoised=False),
        _guided_case(process, "ddpm", 100, 10, 13, 2.0, [0, 1, 2], clip_denoised=True),
        _guided_case(process, "ddim", 50, 3, 14, 1.0, [2, 1], eta=0.0, clip_denoised=True),
        _guided_case(process, "ddim", 50, 3, 15, 0.0, [2, 1], eta=0.0, clip_denoised=True),
    ]
    schedule = {"num_timesteps": 1000, "alphas_cumprod": process.alphas_cumprod_f64.tolist(),
                "value_range": [-1.0, 1.0]}
    return {"schedule": schedule, "timesteps": timesteps, "coefficients": coefficients, "steps": steps, "guided": guided}


def fixture_text() -> str:
    return json.dumps(sampler_numbers(), separators=(",", ":")) + "\n"


if __name__ == "__main__":
    FIXTURE.write_text(fixture_text())
    print(f"wrote {FIXTURE}")
