"""`resumable_loader`: the training DataLoader, resumable mid-epoch with Lightning.

Lightning saves the state of a training loader that has `state_dict` / `load_state_dict` in the
checkpoint (`FitLoop.on_save_checkpoint` stores it under `loops.fit_loop.state_dict.combined_loader`)
and hands it back before the first batch of a resumed run; a plain `DataLoader` has no state,
so a resumed run would restart the epoch in a new order ("your dataloader is not resumable").
torchdata's `StatefulDataLoader` is that loader: its state is how far the sampler got in the
epoch, plus the state of a dataset that has one (`RandomHFlip`'s generator).

The order is a pure function of (seed, epoch): torchdata's `StatefulDistributedSampler`
permutes with a generator seeded `seed + epoch` (as torch's `DistributedSampler` does; Lightning
calls its `set_epoch` at every epoch start) and counts what it yielded, so restoring an epoch
needs only that count. A `RandomSampler` with a running generator would need its generator
saved too, and torchdata's own (torchdata 0.11) restores it one draw behind: the DataLoader
iterator draws its base seed from that generator before the sampler saved it, so every epoch
after a resumed one came out in another order. The same sampler serves one process
(`num_replicas=1`) and DDP (each rank its share, as Lightning's injected `DistributedSampler`
would, which Lightning then leaves alone).
"""

from __future__ import annotations

import os

from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler


def run_seed(seed: int | None) -> int:
    """`seed`, or the run's seed (`seed_everything` sets PL_GLOBAL_SEED; Lightning's own
    `DistributedSampler` reads it the same way), or 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else int(seed)


def resumable_loader(
    data: Dataset,
    batch_size: int,
    seed: int,
    drop_last: bool = True,
    num_replicas: int = 1,
    rank: int = 0,
    **loader_kwargs,
) -> StatefulDataLoader:
    """A shuffling `StatefulDataLoader` over `data` whose order depends on (seed, epoch) only.

    `num_replicas` / `rank`: the DDP world size and this process's global rank (1 and 0 in a
    single process). `loader_kwargs`: num_workers, pin_memory, persistent_workers.
    """
    # drop_last=False here: the sampler pads (with repeats) to a multiple of num_replicas, as
    # Lightning's DistributedSampler does; the loader's drop_last drops the short last batch.
    sampler = StatefulDistributedSampler(data, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
    return StatefulDataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_kwargs)
