"""Seeded noise that belongs to a sample, not to a batch.

Sample i of a run with seed s starts from `fixed_noise([i], shape, s)` and draws every later
step's noise from its own generator `sample_generators([i], s)[0]`. Both depend on (s, i)
only, so a sample is the same whatever the batch size, the order of the batches, or the
number of processes that share the work: the grid callback, the FID callback, the sample and
evaluate commands (through `fixed_samples`) and `noise_loader` all use these two functions and
agree with each other.

A list of generators (one per row) is accepted wherever a `generator=` is (`randn`, the
samplers, `sample`, diffusers' `randn_tensor`): row j of each draw comes from generator j.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SEED_STRIDE = 1_000_003  # a prime > any sample count: seed s, sample i -> s * stride + i
STEP_STREAM = 2**40  # offset of the per-step streams, so they never reuse a starting-noise seed


def _index_list(indices: Sequence[int] | range | torch.Tensor) -> list[int]:
    return [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]


def fixed_noise(indices: Sequence[int] | range, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Starting noise x_T of the given samples, (len(indices), *shape), float32 on the CPU:
    row j is N(0, I) drawn from the seed (seed * SEED_STRIDE + indices[j])."""
    idx = _index_list(indices)
    out = torch.empty(len(idx), *shape)
    for j, i in enumerate(idx):
        g = torch.Generator().manual_seed(seed * SEED_STRIDE + i)
        out[j] = torch.randn(tuple(shape), generator=g)
    return out


def sample_generators(indices: Sequence[int] | range, seed: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample for the noise of the sampling steps (DDPM, DDIM eta > 0,
    img2img, inpainting), seeded from (seed, i) on a stream apart from `fixed_noise`'s."""
    return [torch.Generator().manual_seed(seed * SEED_STRIDE + i + STEP_STREAM) for i in _index_list(indices)]


def randn(shape: Sequence[int], generator, device, dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved: the same seed gives
    the same noise whichever device the model runs on. `generator` may be None, one
    `torch.Generator`, or a list of them, one per row of `shape` (then row j is drawn from
    generator j, so each sample has its own stream)."""
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: give one per sample")
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def fixed_samples(module, indices: Sequence[int] | range, seed: int = 0, **sample_kwargs):
    """`module.sample(...)` of the given samples, each from its own starting noise and its own
    step-noise generator: what the grid and FID callbacks and the sample and evaluate commands
    draw, so that they agree sample for sample. A class-conditional module without a `cond`
    gives sample i class i mod K (`Conditioning.balanced`): class-balanced at any batch split."""
    conditioning = getattr(module, "conditioning", None)
    if conditioning is not None and sample_kwargs.get("cond") is None:
        sample_kwargs["cond"] = conditioning.balanced(indices, module.device)
    return module.sample(
        noise=fixed_noise(indices, module.data_shape, seed), generator=sample_generators(indices, seed), **sample_kwargs
    )


def noise_loader(n: int, data_shape: Sequence[int], batch_size: int = 256, seed: int = 0) -> torch.utils.data.DataLoader:
    """A loader of n fixed starting noises for `Trainer.predict(module, noise_loader(...))`.

    Noise i is a function of (seed, i) only, so the samples do not depend on the batch size or
    on how the loader is split across processes."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of samples must be a positive integer, got {n!r}")
    noise = fixed_noise(range(n), data_shape, seed)  # (n, *data_shape)
    return torch.utils.data.DataLoader(noise, batch_size=batch_size, shuffle=False)
