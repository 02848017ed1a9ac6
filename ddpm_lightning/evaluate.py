"""Score a model or a batch of samples: FID, KID or bits/dim, printed and written as JSON.

    python -m ddpm_lightning.evaluate ckpt=PATH metric=fid sampler=ddim steps=50 n=10000 out=result.json
    python -m ddpm_lightning.evaluate metric=fid samples=A.npz ref=B.npz out=result.json
    python -m ddpm_lightning.evaluate metric=fid samples=A.npz data=digits
    python -m ddpm_lightning.evaluate metric=bpd ckpt=PATH split=val n=1000 timesteps=100

What is scored against what:

    samples     generated samples: `samples=A.npz` (arr_0 as `ddpm_lightning.sample` writes it:
                uint8 N x H x W x C images, or float N x 2 points), or `ckpt=PATH` to generate n
                of them (EMA weights: a checkpoint's state_dict holds them)
    reference   real data: `ref=B.npz` (arr_0 images or points; a guided-diffusion / pytorch-fid
                file holding only mu/sigma serves FID in the inception space), or `data=NAME` (a
                config of conf/data, e.g. digits, cifar10; tune it with data.KEY=VALUE), or, with
                ckpt= and neither, the data of the run that wrote the checkpoint (its
                .hydra/config.yaml)

Options (key=value):

    metric      fid, kid, bpd or nll (= bpd); fid,kid scores both from one feature pass (fid)
    n           samples to generate (10000), or to score from samples= (all), or images for
                bits/dim (the whole split)
    n_ref       real images for the reference statistics (as many as samples, at most the split)
    split       data split of the reference: train for fid/kid, val for bpd
    feature     inception, digits, toy2d or auto (auto): toy2d for 2-D points, digits for
                data=digits (or a digits run), inception for every other image set. Only
                inception numbers are comparable to published FIDs; the JSON names the space.
    weights     explicit Inception weights (or digit classifier) file
    sampler, steps, eta, seed    generation with ckpt= (default: the checkpoint's sampler);
                noise i depends on (seed, i) only, as in the FID callback
    batch_size  images per forward pass (100)
    cache_dir   real statistics cache, shared with the FID callback ($DDPM_LIGHTNING_CACHE or
                ~/.cache/ddpm_lightning; null: no cache)
    small_sample  error (default) or warn when a count is below the feature dimension
    kid_subset_size, kid_subsets   KID subsets (1000, 100; the size is capped at the counts)
    timesteps   bits/dim: evaluate K timesteps (an estimate) instead of all T (exact)
    variance    bits/dim: fixed_small (default) or fixed_large
    data_dir    where torchvision data sets live (default: the paths config's data_dir)
    out         JSON file to write (the result is printed either way)
    device      auto, cpu, cuda, ... (auto);  progress  progress bars (true)
    host_malloc retain (default) or system: glibc's policy for freed host memory, as train.py's

Errors a user can cause (unknown metric, too few samples, a malformed .npz, images of another
size than the reference) end with one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from ddpm_lightning.callbacks.fid import (
    FEATURE_DIMS,
    FEATURES,
    PrecomputedFeatures,
    auto_feature,
    check_feature_for_data,
    fixed_noise,
    real_stats_key,
)
from ddpm_lightning.errors import one_line_errors
from ddpm_lightning.evaluation_inputs import check_same_shape, get_datamodule, load_array_file
from ddpm_lightning.host_malloc import set_host_malloc
from ddpm_lightning.metrics import (
    FeatureStats,
    RealStatsCache,
    check_feature_available,
    check_sample_size,
    make_feature_extractor,
)

METRICS = ("fid", "kid", "bpd", "nll")
DEFAULT_N = 10000  # FID-10k when generating from a checkpoint


def default_cache_dir() -> str:
    """The paths config's cache_dir, without Hydra."""
    home = os.environ.get("HOME", ".")
    return os.environ.get("DDPM_LIGHTNING_CACHE", os.path.join(home, ".cache", "ddpm_lightning"))


DEFAULTS: dict[str, Any] = {
    "metric": "fid",
    "ckpt": None,
    "samples": None,
    "ref": None,
    "data": None,
    "data_dir": None,
    "split": None,
    "n": None,
    "n_ref": None,
    "feature": "auto",
    "weights": None,
    "sampler": None,
    "steps": None,
    "eta": None,
    "seed": 0,
    "batch_size": 100,
    "cache_dir": "default",
    "small_sample": "error",
    "kid_subset_size": 1000,
    "kid_subsets": 100,
    "timesteps": None,
    "variance": "fixed_small",
    "out": None,
    "device": "auto",
    "progress": True,
    "host_malloc": "retain",
}


# ---- arguments ------------------------------------------------------------------------------
def _check_int(args: dict[str, Any], key: str, minimum: int = 1) -> None:
    value = args[key]
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")


def parse_metrics(value: Any) -> list[str]:
    """'fid', 'fid,kid' or [fid, kid] -> a list of metric names; nll is bpd."""
    names = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric {', '.join(unknown) or repr(value)}; choose from {list(METRICS)}")
    names = ["bpd" if n == "nll" else n for n in names]
    if "bpd" in names and len(set(names)) > 1:
        raise ValueError("bits/dim (metric=bpd) and fid/kid are separate runs: give one or the other")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str]) -> dict[str, Any]:
    """key=value arguments over DEFAULTS; `data.KEY=VALUE` tune the data config."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments are key=value pairs, got {bad}; keys: {sorted(DEFAULTS)}")
    data_args = [a[len("data.") :] for a in argv if a.startswith("data.")]
    given = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv if not a.startswith("data.")]))
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {sorted(DEFAULTS)} and data.KEY=VALUE")
    args = {**DEFAULTS, **given}
    args["data_overrides"] = OmegaConf.to_container(OmegaConf.from_dotlist(data_args)) if data_args else {}
    args["metric"] = parse_metrics(args["metric"])
    for key in ("n", "n_ref", "batch_size", "kid_subset_size", "kid_subsets", "steps"):
        _check_int(args, key)
    _check_int(args, "timesteps", minimum=2)
    if args["feature"] not in FEATURES:
        raise ValueError(f"feature must be one of {list(FEATURES)}, got {args['feature']!r}")
    if args["small_sample"] not in ("error", "warn"):
        raise ValueError(f"small_sample must be 'error' or 'warn', got {args['small_sample']!r}")
    if args["split"] is not None and args["split"] not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {args['split']!r}")
    if args["cache_dir"] == "default":
        args["cache_dir"] = default_cache_dir()
    return args


def check_count(n: int, dim: int, what: str, policy: str) -> None:
    """`check_sample_size`, with the way out named when it refuses."""
    try:
        check_sample_size(n, dim, what, policy=policy)
    except ValueError as err:
        if n < 2 or policy != "error":
            raise
        raise ValueError(f"{err} (small_sample=warn scores it anyway)") from None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


# ---- features -------------------------------------------------------------------------------
@torch.no_grad()
def extract_features(
    batches: Iterable[torch.Tensor], extractor: torch.nn.Module, device, keep: bool, desc: str, total: int | None, progress: bool
) -> tuple[FeatureStats, torch.Tensor | None]:
    """Feature statistics of a stream of batches (float64 sums), and the features if `keep` (KID)."""
    total_sum = outer = None
    kept, n = [], 0
    for batch in tqdm(batches, desc=desc, total=total, disable=not progress, unit="batch"):
        f = extractor(batch.to(device))  # (B, D)
        if keep:
            kept.append(f.float().cpu())
        f = f.double()
        total_sum = f.sum(0) if total_sum is None else total_sum + f.sum(0)
        outer = f.T @ f if outer is None else outer + f.T @ f
        n += f.shape[0]
    if total_sum is None:
        raise ValueError(f"no data to score ({desc})")
    stats = FeatureStats.from_sums(total_sum.cpu(), outer.cpu(), n)
    return stats, (torch.cat(kept) if keep else None)


def generated_batches(module, n: int, batch_size: int, sampler, num_steps: int | None, seed: int, progress: bool) -> Iterator[torch.Tensor]:
    """n samples of `module` in batches; noise i depends on (seed, i) only (as in the FID callback)."""
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        noise = fixed_noise(idx, module.data_shape, seed)
        g = torch.Generator().manual_seed(seed * 1_000_003 + idx[0] + 7919)
        yield module.sample(noise=noise, sampler=sampler, num_steps=num_steps, generator=g).samples


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int, seed: int) -> tuple[float, float]:
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")  # we hold them anyway
        kid = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subsets=subsets,
                                      subset_size=min(subset_size, len(real), len(fake)))
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the random subsets
        mean, std = kid.compute()
    return float(mean), float(std)


# ---- FID / KID ------------------------------------------------------------------------------
def run_fid(args: dict[str, Any]) -> dict[str, Any]:
    metrics, bs, progress = args["metric"], args["batch_size"], args["progress"]
    want_kid = "kid" in metrics
    if args["samples"] and args["ckpt"]:
        raise ValueError("give samples=FILE.npz or ckpt=PATH (the samples to score), not both")
    if not args["samples"] and not args["ckpt"]:
        raise ValueError("give samples=FILE.npz or ckpt=PATH: the samples to score")
    if args["ref"] and args["data"]:
        raise ValueError("give ref=FILE.npz or data=NAME (the reference), not both")
    device = resolve_device(args["device"])
    result: dict[str, Any] = {"metric": metrics}

    # 1. the samples: a file, or a model to generate from
    module = fake_images = None
    if args["samples"]:
        fake_images = load_array_file(args["samples"], "samples")
        fake_shape = tuple(fake_images.shape[1:])
        n = len(fake_images) if args["n"] is None else args["n"]
        if n > len(fake_images):
            raise ValueError(f"n={n} but {args['samples']!r} holds {len(fake_images)} samples")
        fake_images = fake_images[:n]
        result["samples"] = {"source": "npz", "path": str(args["samples"]), "n": n}
    else:
        from ddpm_lightning.sample import load_module

        module = load_module(args["ckpt"], str(device))
        fake_shape = tuple(module.data_shape)
        n = args["n"] or DEFAULT_N
        overrides = {"eta": args["eta"]} if args["eta"] is not None else {}
        sampler, default_steps = module.make_sampler(args["sampler"], **overrides)
        steps = args["steps"] if args["steps"] is not None else default_steps
        result["samples"] = {"source": "ckpt", "path": str(args["ckpt"]), "n": n, "seed": args["seed"],
                             "sampler": {"name": sampler.name, "num_steps": steps, **overrides}}

    # 2. the reference: a file, a data set, or the checkpoint's run's data
    dm = ref = None
    if args["ref"]:
        ref = load_array_file(args["ref"], "reference")
        if isinstance(ref, torch.Tensor):
            check_same_shape(fake_shape, tuple(ref.shape[1:]), f"the reference {args['ref']!r}")
    else:
        dm = get_datamodule(args, "FID")
        check_same_shape(fake_shape, tuple(dm.data_shape), f"data {dm.name!r}")
    data_name = dm.name if dm is not None else None

    # 3. the feature space, checked before any work
    feature = args["feature"] if args["feature"] != "auto" else auto_feature(fake_shape, data_name)
    check_feature_for_data(feature, fake_shape, data_name)
    check_feature_available(feature, args["weights"])
    dim = FEATURE_DIMS[feature]
    policy = args["small_sample"]
    check_count(n, dim, f"{feature} features (the samples)", policy)
    result.update(feature=feature, feature_dim=dim, comparable_to_published=feature == "inception")

    # 4. the reference statistics (and features, for KID)
    extractor = make_feature_extractor(feature, args["weights"]).to(device)
    real_feats = None
    if isinstance(ref, FeatureStats):
        if want_kid:
            raise ValueError(f"KID needs reference images; {args['ref']!r} holds only mu/sigma statistics")
        if feature != "inception" or ref.dim != dim:
            raise ValueError(
                f"{args['ref']!r} holds {ref.dim}-d mu/sigma statistics (an Inception pool3 file); "
                f"they can only be compared in the 2048-d inception space, not {feature!r}"
            )
        real_stats = ref
        result["reference"] = {"source": "npz statistics (mu, sigma)", "path": str(args["ref"]), "n": ref.n}
    elif ref is not None:
        n_ref = min(args["n_ref"] or len(ref), len(ref))
        check_count(n_ref, dim, f"{feature} features (the reference)", policy)
        real_stats, real_feats = extract_features(
            ref[:n_ref].split(bs), extractor, device, want_kid, f"reference {feature} features", math.ceil(n_ref / bs), progress
        )
        result["reference"] = {"source": "npz", "path": str(args["ref"]), "n": n_ref}
    else:
        split = args["split"] or "train"
        available = len(dm.split_indices(split))
        n_ref = args["n_ref"] or min(n, available)
        check_count(n_ref, dim, f"{feature} features (the reference)", policy)
        key = real_stats_key(dm, split, n_ref, feature, args["weights"])
        cache = RealStatsCache(args["cache_dir"]) if args["cache_dir"] else None
        real_stats = cache.load(key, dim=dim) if cache is not None else None
        cached = real_stats is not None
        if real_stats is None or want_kid:
            images = dm.real_samples(n_ref, split)  # clear error if the split is smaller
            stats, real_feats = extract_features(
                images.split(bs), extractor, device, want_kid, f"reference {feature} features", math.ceil(n_ref / bs), progress
            )
            if real_stats is None:
                real_stats = stats
                if cache is not None:
                    cache.save(key, stats)
        result["reference"] = {"source": "data", "data": dm.name, "split": split, "n": n_ref,
                               "cache": "off" if cache is None else ("hit" if cached else "miss"), "cache_key": key}

    # 5. the samples' features, batch by batch (generated samples are dropped after their batch)
    if module is not None:
        batches = generated_batches(module, n, bs, sampler, steps, args["seed"], progress)
        desc = f"sampling + {feature} features"
    else:
        batches = fake_images.split(bs)
        desc = f"sample {feature} features"
    fake_stats, fake_feats = extract_features(batches, extractor, device, want_kid, desc, math.ceil(n / bs), progress)

    if "fid" in metrics:
        # the reference first: usually the larger set, so its covariance is the one factorised
        # (Cholesky, the fast path of "eigh") when the samples are fewer than the feature dimension
        result["fid"] = real_stats.frechet_distance(fake_stats, method="eigh", small_sample="ignore")
    if want_kid:
        result["kid"], result["kid_std"] = kid_from_features(
            real_feats, fake_feats, args["kid_subset_size"], args["kid_subsets"], args["seed"]
        )
    return result


# ---- bits/dim -------------------------------------------------------------------------------
def run_bpd(args: dict[str, Any]) -> dict[str, Any]:
    from ddpm_lightning.likelihood import bits_per_dim
    from ddpm_lightning.sample import load_module

    if not args["ckpt"]:
        raise ValueError("metric=bpd needs ckpt=PATH: bits/dim is a property of a model")
    if args["samples"] or args["ref"]:
        raise ValueError("metric=bpd scores a model on real data (ckpt= and data=); samples= and ref= do not apply")
    device = resolve_device(args["device"])
    module = load_module(args["ckpt"], str(device))
    if module.data_shape is None or len(module.data_shape) != 3:
        raise ValueError(
            f"bits/dim needs an image model (its decoder is over 8-bit pixels); this checkpoint's data has "
            f"shape {module.data_shape}"
        )
    dm = get_datamodule(args, "bits/dim")
    check_same_shape(tuple(module.data_shape), tuple(dm.data_shape), f"data {dm.name!r}")
    split = args["split"] or "val"
    n = args["n"] or len(dm.split_indices(split))
    images = dm.real_samples(n, split)
    res = bits_per_dim(module, images, num_timesteps=args["timesteps"], batch_size=args["batch_size"],
                       variance=args["variance"], seed=args["seed"], progress=args["progress"])
    return {"metric": ["bpd"], **res, "data": dm.name, "split": split, "ckpt": str(args["ckpt"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    set_host_malloc(args["host_malloc"])  # CPU sampling steps fault their memory back in otherwise
    start = time.perf_counter()
    result = run_bpd(args) if args["metric"] == ["bpd"] else run_fid(args)
    result["seconds"] = round(time.perf_counter() - start, 1)
    shown = {k: v for k, v in result.items() if k not in ("timesteps", "terms_bpd")}  # long lists: file only
    print(json.dumps(shown, indent=2))
    if args["out"]:
        out = Path(args["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    with one_line_errors():
        main()
