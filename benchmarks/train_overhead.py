"""Training throughput of the `train.py` path against a bare PyTorch loop.

    python benchmarks/train_overhead.py                          # unet_small, digits, batch 128, CPU
    python benchmarks/train_overhead.py --device cuda --network unet_ddpm_cifar10 --precision bf16-mixed
    python benchmarks/train_overhead.py --smoke                  # CI: tiny UNet, 2 steps

Ours: the composed `train` config (`network=... data=...`) built by `ddpm_lightning.train.build`
and fitted by its Lightning Trainer: DiffusionModule.training_step, Lightning's loop, gradient
clipping at 1.0, the warm-up LR schedule, `self.log` every step. Reference: a hand-written loop
on the same UNet2DModel (the module's own network object, same seed), the same DataLoader, the
same AdamW and LambdaLR objects (from the same configs), the same clipping and autocast, and
the loss written inline (q_sample, MSE on epsilon). Neither side validates, checkpoints, logs to
a logger or draws a progress bar. EMA is measured both ways: off on both sides, and on on both
sides (our EMA callback vs `torch._foreach_lerp_` after each step).

On a CPU the two sides run interleaved, one step each in turn inside one `trainer.fit` (a
callback runs the bare step after each Lightning step), and each step is timed: neighbouring
steps see the same load from other processes, so the median per-step ratio holds on a busy
machine. On CUDA (`--mode alternate`) whole runs alternate, timed over the steps after
`--warmup` and synchronised only at the two ends, so that no timing sync changes the overlap of
host and device work.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from benchlib import (
    Measured,
    Row,
    alternate,
    autocast,
    build_run,
    compose,
    finish_args,
    mark,
    median,
    minor_faults,
    ratio_of_medians,
    script_main,
    spread,
    train_overrides,
)
from lightning.pytorch.callbacks import Callback

GOAL = ">= 0.98"


class WindowTimer(Callback):
    """Wall and process CPU time, and minor page faults, of optimizer steps (warmup, total],
    synchronised at the two ends only."""

    def __init__(self, warmup: int, total: int, device: str) -> None:
        self.warmup, self.total, self.device = warmup, total, device
        self.marks: dict[int, tuple[float, float]] = {}
        self.faults: dict[int, int] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in (self.warmup, self.total):
            self.marks[trainer.global_step] = mark(self.device)
            self.faults[trainer.global_step] = minor_faults()

    def images_per_s(self, batch_size: int) -> Measured:
        return Measured.rate(batch_size * (self.total - self.warmup), self.marks[self.warmup], self.marks[self.total])

    def faults_per_step(self) -> float:
        return (self.faults[self.total] - self.faults[self.warmup]) / (self.total - self.warmup)


def lightning_run(args, *, ema: bool, extra=()) -> WindowTimer:
    """`trainer.fit` on the composed config, timed by a WindowTimer over the steps after warm-up."""
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=args.batch_size, max_steps=total, ema=ema, extra=extra), Path(out))
        datamodule, model, trainer = build_run(cfg)
        timer = WindowTimer(args.warmup, total, args.device)
        trainer.callbacks.append(timer)  # last: after EMA's on_train_batch_end
        trainer.fit(model, datamodule=datamodule)
    return timer


def lightning_images_per_s(args, *, ema: bool, extra=()) -> Measured:
    """Images/s of `trainer.fit` on the composed config."""
    return lightning_run(args, ema=ema, extra=extra).images_per_s(args.batch_size)


class BareLoop:
    """A hand-written training loop with the same network, data, optimizer and precision as the
    composed config: `step()` runs one optimizer step."""

    def __init__(self, args, cfg, *, ema: bool) -> None:
        datamodule, model, _ = build_run(cfg)
        self.device = device = torch.device(args.device)
        self.precision = args.precision
        datamodule.setup("fit")
        self.loader = datamodule.train_dataloader()
        self._batches = self._forever()
        model.to(device)  # moves the network and the schedule buffers, as Lightning does
        self.net = net = model.network.unet  # the diffusers UNet2DModel itself
        net.train()
        self.channels_last = bool(cfg.model.channels_last)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        if cfg.model.compile:
            net.compile()
        opt_conf = model.configure_optimizers()  # the same optimizer and LR schedule objects
        if isinstance(opt_conf, dict):
            self.opt, self.sched = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
        else:
            self.opt, self.sched = opt_conf, None
        self.sqrt_ab = model.process.sqrt_alphas_cumprod
        self.sqrt_1m_ab = model.process.sqrt_one_minus_alphas_cumprod
        self.T = model.process.num_timesteps
        self.clip = cfg.trainer.gradient_clip_val
        self.scaler = torch.amp.GradScaler(device.type) if args.precision == "16-mixed" else None
        self.params = list(net.parameters())
        self.ema_params = [p.detach().clone() for p in self.params] if ema else None
        self.ema_decay = cfg.callbacks.ema.decay if ema else None
        self.n = 0

    def _forever(self):
        while True:
            yield from self.loader

    def step(self) -> None:
        x0 = next(self._batches).to(self.device, non_blocking=True)
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        self.opt.zero_grad(set_to_none=True)
        t = torch.randint(0, self.T, (x0.shape[0],), device=self.device)
        noise = torch.randn_like(x0)
        x_t = self.sqrt_ab[t].view(-1, 1, 1, 1) * x0 + self.sqrt_1m_ab[t].view(-1, 1, 1, 1) * noise  # DDPM eq. 4
        with autocast(self.device.type, self.precision):
            out = self.net(x_t, t).sample
        loss = F.mse_loss(out.float(), noise)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        if self.sched is not None:
            self.sched.step()
        if self.ema_params is not None:
            current = [p.detach() for p in self.params]
            if self.n == 0:
                torch._foreach_copy_(self.ema_params, current)
            else:  # the EMA callback's warm-up
                decay = min(self.ema_decay, (1 + self.n) / (10 + self.n))
                torch._foreach_lerp_(self.ema_params, current, 1.0 - decay)
        self.n += 1


def bare_images_per_s(args, *, ema: bool, extra=()) -> Measured:
    """Images/s of the hand-written loop."""
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=args.batch_size, max_steps=total, ema=ema, extra=extra), Path(out))
        loop = BareLoop(args, cfg, ema=ema)
    for _ in range(args.warmup):
        loop.step()
    start = mark(args.device)
    for _ in range(args.steps):
        loop.step()
    return Measured.rate(args.batch_size * args.steps, start, mark(args.device))


class Interleave(Callback):
    """Runs one step of another loop with each Lightning step, timing both, so that neighbouring
    steps of the two sides see the same machine load (CPU; on a GPU the per-step synchronisation
    would change what is measured). The other step runs after the Lightning step on even steps
    and before its training step on odd ones, so neither side always goes first. Lightning's time
    is everything between two `on_train_batch_end` calls (data fetch, hooks, loop) minus the
    other step. Each step is timed by the wall clock and by this process's CPU time."""

    def __init__(self, other_step, warmup: int, device: str) -> None:
        self.other_step, self.warmup, self.device = other_step, warmup, device
        self.ours: list[Measured] = []
        self.theirs: list[Measured] = []
        self._k, self._last, self._other = 0, None, (0.0, 0.0)

    def _run_other(self) -> tuple[float, float]:
        start = mark(self.device)
        self.other_step()
        stop = mark(self.device)
        return stop[0] - start[0], stop[1] - start[1]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._other = self._run_other() if self._k % 2 else (0.0, 0.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._k % 2 == 0:
            self._other = self._run_other()
        now = mark(self.device)
        if self._last is not None and self._k >= self.warmup:
            self.ours.append(Measured(now[0] - self._last[0] - self._other[0], now[1] - self._last[1] - self._other[1]))
            self.theirs.append(Measured(*self._other))
        self._last, self._k = now, self._k + 1


def aa_control(args, *, steps: int) -> tuple[list[Measured], list[Measured]]:
    """The harness against itself: two copies of the bare loop, interleaved the same way (order
    alternating). Its per-step ratio shows the resolution of the interleaved measurement."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=args.batch_size, max_steps=1), Path(out))
        loops = [BareLoop(args, cfg, ema=False), BareLoop(args, cfg, ema=False)]
    times: list[list[Measured]] = [[], []]
    for k in range(args.warmup + steps):
        for i in (0, 1) if k % 2 == 0 else (1, 0):
            start = mark(args.device)
            loops[i].step()
            if k >= args.warmup:
                times[i].append(Measured.duration(start, mark(args.device)))
    return times[0], times[1]


def interleaved_seconds(args, other_factory, *, ema: bool, extra=()) -> tuple[list[float], list[float]]:
    """Seconds per step of the train.py path and of `other_factory(cfg)`'s `step`, interleaved
    step by step in one `trainer.fit`."""
    total = args.warmup + args.steps + 1
    with tempfile.TemporaryDirectory() as out:
        cfg = compose(train_overrides(args, batch_size=args.batch_size, max_steps=total, ema=ema, extra=extra), Path(out))
        datamodule, model, trainer = build_run(cfg)
        other = other_factory(cfg)
        cb = Interleave(other.step, args.warmup, args.device)
        trainer.callbacks.append(cb)  # last: after EMA's on_train_batch_end
        trainer.fit(model, datamodule=datamodule)
    return cb.ours, cb.theirs


def interleaved_row(benchmark: str, case: str, goal: str, args, ours: list[Measured], theirs: list[Measured], note: str = "") -> Row:
    """A row from per-step times: images/s from the median step times; the ratio is the median
    of the per-step ratios (each pair ran back to back), by the wall clock, and in the note by
    process CPU time (with one torch thread, the load-robust measure)."""

    def paired(a: list[float], b: list[float]) -> tuple[float, list[float]]:
        ratios = [y / x for x, y in zip(a, b)]  # images/s ours / theirs, step by step
        return median(ratios), statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3

    wall, q = paired(ours, theirs)
    cpu, qc = paired([m.cpu for m in ours], [m.cpu for m in theirs])
    return Row(benchmark, case, args.batch_size / median(ours), args.batch_size / median(theirs), "images/s",
               wall, goal,
               note=f"{note}interleaved step by step, {len(ours)} pairs after {args.warmup} warm-up; per-step "
                    f"ratios quartiles {q[0]:.3f} / {q[2]:.3f}; by process CPU time: ratio {cpu:.3f} "
                    f"(quartiles {qc[0]:.3f} / {qc[2]:.3f})")


def run(args) -> list[Row]:
    rows = []
    if args.mode == "interleaved" and not args.smoke:
        a, b = aa_control(args, steps=args.steps)
        rows.append(interleaved_row("training overhead", f"control: bare loop vs a copy of itself, {args.network}, "
                                    f"batch {args.batch_size}, {args.device}", "", args, a, b,
                                    "the resolution of the interleaved measurement (ideal 1.000); "))
    for ema in args.ema:
        case = (f"train.py path vs bare loop: {args.network}, batch {args.batch_size}, {args.precision}, "
                f"{args.device}, EMA {'on (both)' if ema else 'off (both)'}")
        if args.mode == "interleaved":
            ours, theirs = interleaved_seconds(args, lambda cfg, ema=ema: BareLoop(args, cfg, ema=ema), ema=ema)
            rows.append(interleaved_row("training overhead", case, GOAL, args, ours, theirs))
            continue
        sides = {
            "lightning": lambda ema=ema: lightning_images_per_s(args, ema=ema),
            "bare": lambda ema=ema: bare_images_per_s(args, ema=ema),
        }
        res = alternate(sides, args.repeats)
        rows.append(Row("training overhead", case, median(res["lightning"]), median(res["bare"]), "images/s",
                        ratio_of_medians(res["lightning"], res["bare"]), GOAL,
                        note=f"alternating runs of {args.steps} steps after {args.warmup} warm-up; "
                             + spread(res["lightning"], res["bare"])))
    return rows


def add_args(p) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (Ho et al.); smoke 8")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (>= 1)")
    p.add_argument("--ema", type=lambda s: [bool(int(v)) for v in s.split(",")], default=None,
                   help="EMA off/on cases to run, e.g. 0,1 (default) or 0")
    add_mode_arg(p)


def add_mode_arg(p) -> None:
    p.add_argument("--mode", default=None, choices=["interleaved", "alternate"],
                   help="interleaved: one step of each side in turn inside one fit, timed per step (default on "
                        "CPU: robust to a busy machine); alternate: whole timed runs of each side in turn "
                        "(default on CUDA, where per-step timing would add synchronisations)")


def finish_mode(args) -> None:
    if args.mode is None:
        args.mode = "alternate" if args.device == "cuda" else "interleaved"


def defaults(args) -> None:
    finish_args(args, batch_size=(128, 8), steps=(40, 2), warmup=(3, 1), ema=([False, True], [False]))
    finish_mode(args)


def main(argv=None) -> list[Row]:
    return script_main(__doc__, "Training: train.py path vs a bare PyTorch loop", run, argv, add_args, defaults)


if __name__ == "__main__":
    main()
