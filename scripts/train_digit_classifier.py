"""Train the digit classifier whose 64-d penultimate layer is the 'digits' FID/KID feature space.

    python scripts/train_digit_classifier.py            # writes ddpm_lightning/metrics/digit_classifier.pt

Deterministic (seed 0, CPU, single thread for the BLAS reductions), about 10 s on 2 CPU cores.
Trains on the training part of `digits_split()` and reports the accuracy on the held-out part;
copy that number into `DIGITS_HELDOUT_ACCURACY` in ddpm_lightning/metrics/digits.py, where the
tests check it. Retraining changes the feature space, so digit-FIDs computed before and after
are not comparable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_lightning.metrics.digits import DIGITS_WEIGHTS, DigitCNN, digits_split, load_digits_images


def accuracy(model: DigitCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def train(epochs: int, seed: int, lr: float, batch_size: int) -> tuple[DigitCNN, float]:
    torch.manual_seed(seed)
    # One thread: the same float sums in the same order on every machine.
    torch.set_num_threads(1)
    images, labels = load_digits_images()  # (N, 1, 16, 16) in [-1, 1], (N,)
    train_idx, heldout_idx = digits_split(labels)
    x, y = images[train_idx], labels[train_idx]

    model = DigitCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=gen).split(batch_size):
            # Small random shifts (+-1 px) so features do not hinge on exact pixel positions.
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(x[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}, train acc {accuracy(model, x, y):.4f}")
    heldout_acc = accuracy(model, images[heldout_idx], labels[heldout_idx])
    return model, heldout_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DIGITS_WEIGHTS)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    model, heldout_acc = train(args.epochs, args.seed, args.lr, args.batch_size)
    torch.save(
        {"state_dict": model.state_dict(), "heldout_accuracy": heldout_acc, "seed": args.seed, "epochs": args.epochs},
        args.out,
    )
    print(f"held-out accuracy {heldout_acc:.4f}; wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
