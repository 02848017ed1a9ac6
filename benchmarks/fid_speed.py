"""Time InceptionV3 feature extraction (the slow half of FID) and the 2048-d Fréchet distance.

    python benchmarks/fid_speed.py                      # 1000 images of 32x32, batches of 50, CPU
    python benchmarks/fid_speed.py --n 200 --size 64 --device cuda

Prints images/s for `InceptionFeatures` (resize to 299 included) and the seconds one FID
`compute()` takes from 2048-d statistics with each method. Not part of the tests: timings
depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import time

import torch

from ddpm_lightning.metrics import FeatureStats, InceptionFeatures, frechet_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="number of images")
    parser.add_argument("--size", type=int, default=32, help="image side before the resize to 299")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-frechet", action="store_true", help="do not time the 2048-d distance")
    args = parser.parse_args()

    device = torch.device(args.device)
    feature = InceptionFeatures().to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    feature(images[:2].to(device))  # warm-up (allocations, cuDNN autotuning)

    features = []
    start = time.perf_counter()
    for batch in images.split(args.batch_size):
        features.append(feature(batch.to(device)).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(
        f"InceptionFeatures: {args.n} images {args.size}x{args.size} -> 299, batch {args.batch_size}, "
        f"{device}, {torch.get_num_threads()} threads: {elapsed:.1f} s, {args.n / elapsed:.1f} images/s"
    )

    if args.skip_frechet:
        return
    f = torch.cat(features)
    half = len(f) // 2
    a, b = FeatureStats.from_features(f[:half]), FeatureStats.from_features(f[half:])
    for method in ("eigh", "sqrtm"):
        start = time.perf_counter()
        value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method)
        print(f"frechet_distance(method={method!r}), 2048-d: {time.perf_counter() - start:.1f} s (value {value:.3f})")


if __name__ == "__main__":
    main()
