"""Score a model or a batch of samples: FID, KID or bits/dim, printed and written as JSON.

    python -m ddpm_lightning.evaluate ckpt=PATH metric=fid sampler=ddim sampler.num_steps=50 n=10000
    python -m ddpm_lightning.evaluate metric=fid samples=A.npz ref=B.npz out=result.json
    python -m ddpm_lightning.evaluate 'metric=[fid,kid]' samples=A.npz data=digits
    python -m ddpm_lightning.evaluate metric=bpd ckpt=PATH split=val n=1000 timesteps=100
    python -m ddpm_lightning.evaluate -m ckpt=PATH sampler=ddim,ddpm sampler.num_steps=10,50
    python -m ddpm_lightning.evaluate 'metric=[psnr,ssim]' ckpt=PATH data=digits n=100   # conditioning=image
    python -m ddpm_lightning.evaluate ckpt=PATH guidance=3 n=1000   # conditioning=class: class-balanced, guided at w = 3

A Hydra command over conf/evaluate.yaml (`--help` lists every option): `sampler=NAME` is a
preset of train.py's sampler group, `data=NAME` one of its data group (`data.KEY=VALUE` tunes
it), `-m` sweeps, one result per job (`<job dir>/result.json`, or `out=FILE`). The reference's
feature statistics come from `metrics.RealStatsCache`, the same cache as the FID callback's;
generated sample i comes from (seed, i) only (`noise.fixed_samples`), as in the FID callback; a
class-conditional model's sample i asks for class i mod K (class-balanced, as the FID callback
draws), at the guidance `guidance=W` (default the checkpoint's `conditioning.guidance_scale`),
and the JSON's "samples" record names both.
Errors a user can cause (unknown metric, too few samples, a malformed .npz, images of another
size than the reference) end with one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.checkpoint_file import load_module
from ddpm_lightning.cli import compose, is_multirun, job_dir, run_command, sampler_spec, sampler_summary
from ddpm_lightning.evaluation_inputs import check_same_shape, get_datamodule, load_array_file
from ddpm_lightning.guidance import check_guidance
from ddpm_lightning.host_malloc import set_host_malloc
from ddpm_lightning.metrics import FEATURE_DIMS, FEATURES, FeatureStats, PrecomputedFeatures, RealStatsCache
from ddpm_lightning.metrics import auto_feature, check_feature_available, check_feature_for_data, check_sample_size
from ddpm_lightning.metrics import compute_feature_stats, make_feature_extractor, make_metric, real_stats_key
from ddpm_lightning.noise import fixed_samples

METRICS = ("fid", "kid", "bpd", "nll", "psnr", "ssim")
RESTORATION = {"psnr", "ssim"}  # an image-conditioned model against the ground truth (metrics.restoration)
DEFAULT_N = 10000  # FID-10k when generating from a checkpoint


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
    if RESTORATION & set(names) and not set(names) <= RESTORATION:
        raise ValueError("psnr/ssim (an image-conditioned model against the ground truth) and fid/kid/bpd are separate runs")
    return list(dict.fromkeys(names))


def check_args(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as a plain dict, its values checked before any work. The `data` and
    `paths` nodes stay unresolved: `data.data_dir: ${paths.data_dir}` follows a given data_dir."""
    args = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in cfg.items()}
    args.setdefault("data", None)  # no data=NAME: the defaults list chose none
    args["metric"] = parse_metrics(args["metric"])
    for key in ("n", "n_ref", "batch_size", "kid_subset_size", "kid_subsets"):
        _check_int(args, key)
    _check_int(args, "timesteps", minimum=2)
    if args["feature"] not in FEATURES:
        raise ValueError(f"feature must be one of {list(FEATURES)}, got {args['feature']!r}")
    if args["small_sample"] not in ("error", "warn"):
        raise ValueError(f"small_sample must be 'error' or 'warn', got {args['small_sample']!r}")
    if args["split"] is not None and args["split"] not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {args['split']!r}")
    if args["guidance"] is not None:  # < 0 or not a number: before any checkpoint is read
        check_guidance(args["guidance"])
    if args["data_dir"] is not None:  # the old spelling of paths.data_dir
        args["paths"]["data_dir"] = args["data_dir"]
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


# ---- generated samples ---------------------------------------------------------------------
def guidance_record(module, guidance: float | None) -> dict[str, Any]:
    """What the JSON says of a conditional model's draw (nothing for an unconditional one), and
    `guidance=` checked against the model, one line before any sampling: a number for an
    unconditional model, or w != 1 for one trained without condition dropout, is refused."""
    conditioning = module.conditioning
    if not conditioning.is_conditional:
        if guidance is not None:
            raise ValueError(f"guidance={guidance!r} needs a conditional model (conditioning=class), but this checkpoint "
                             "is unconditional (trained with conditioning=none): leave guidance unset")
        return {}
    conditioning.guided(module.denoiser, guidance)  # w != 1 without condition dropout: one line
    w = conditioning.guidance_scale if guidance is None else float(guidance)
    record: dict[str, Any] = {"guidance_scale": w,
                              "guidance_from": "guidance=" if guidance is not None else "conditioning.guidance_scale of the checkpoint"}
    k = getattr(conditioning, "num_classes", None)
    if k is not None:  # fixed_samples gives sample i class i mod K
        record.update(labels="class-balanced (sample i: class i mod K)", class_balanced=True, num_classes=k)
    return record


def generated_batches(module, n: int, batch_size: int, spec: dict[str, Any], seed: int,
                      record: dict[str, Any] | None = None, guidance: float | None = None) -> Iterator[torch.Tensor]:
    """n samples of `module` in batches; sample i depends on (seed, i) only (as in the FID callback),
    and for a class-conditional model asks for class i mod K, at guidance w (None: the model's).
    `record["nfe"]` gets the network evaluations per sample (Heun's steps cost two)."""
    guide = {"guidance_scale": guidance} if module.conditioning.is_conditional else {}
    for start in range(0, n, batch_size):
        res = fixed_samples(module, range(start, min(n, start + batch_size)), seed, sampler=spec, **guide)
        if record is not None:
            record["nfe"] = res.nfe
        yield res.samples


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int, seed: int) -> tuple[float, float]:
    kid = make_metric("kid", PrecomputedFeatures(real.shape[1]), subsets=subsets,
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
    if args["samples"] and args["guidance"] is not None:
        raise ValueError(f"guidance={args['guidance']} applies to samples generated from ckpt=, not to samples={args['samples']}")
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
        module = load_module(args["ckpt"], str(device), bool(args["trust_checkpoint"]))
        fake_shape = tuple(module.data_shape)
        n = args["n"] or DEFAULT_N
        spec = args["sampler_spec"] = sampler_spec(args["cfg"], module.hparams.sampler)
        module.make_sampler(spec)  # a bad sampler option fails here, before any work
        if getattr(module.conditioning, "type", None) == "image":
            raise ValueError("metric=fid/kid draws samples without conditions, but this checkpoint is image-conditioned "
                             "(conditioning=image): score its restorations with metric=[psnr,ssim]")
        result["samples"] = {"source": "ckpt", "path": str(args["ckpt"]), "n": n, "seed": args["seed"],
                             "sampler": sampler_summary(spec), **guidance_record(module, args["guidance"])}

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
    extract = {"batch_size": bs, "device": device, "small_sample": "ignore", "keep_features": want_kid, "progress": progress}
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
        real_stats = compute_feature_stats(ref[:n_ref], extractor, desc=f"reference {feature} features", **extract)
        result["reference"] = {"source": "npz", "path": str(args["ref"]), "n": n_ref}
    else:
        split = args["split"] or "train"
        available = len(dm.split_indices(split))
        n_ref = args["n_ref"] or min(n, available)
        check_count(n_ref, dim, f"{feature} features (the reference)", policy)
        key = real_stats_key(dm, split, n_ref, feature, args["weights"])
        cache = RealStatsCache(args["cache_dir"])
        real_stats, cached = cache.get_or_compute(
            key, lambda: dm.real_samples(n_ref, split), extractor, desc=f"reference {feature} features", **extract
        )  # a clear error if the split is smaller
        result["reference"] = {"source": "data", "data": dm.name, "split": split, "n": n_ref,
                               "cache": "off" if cache.cache_dir is None else ("hit" if cached else "miss"), "cache_key": key}

    # 5. the samples' features, batch by batch (generated samples are dropped after their batch)
    if module is not None:
        batches = generated_batches(module, n, bs, spec, args["seed"], record=result["samples"], guidance=args["guidance"])
        desc = f"sampling + {feature} features"
    else:
        batches = fake_images.split(bs)
        desc = f"sample {feature} features"
    fake_stats = compute_feature_stats(batches, extractor, desc=desc, **extract)

    if "fid" in metrics:
        # the reference first: usually the larger set, so its covariance is the one factorised
        # (Cholesky, the fast path of "eigh") when the samples are fewer than the feature dimension
        result["fid"] = real_stats.frechet_distance(fake_stats, method="eigh", small_sample="ignore")
    if want_kid:
        result["kid"], result["kid_std"] = kid_from_features(
            real_stats.features, fake_stats.features, args["kid_subset_size"], args["kid_subsets"], args["seed"]
        )
    return result


# ---- bits/dim -------------------------------------------------------------------------------
def run_bpd(args: dict[str, Any]) -> dict[str, Any]:
    from ddpm_lightning.likelihood import bits_per_dim

    if not args["ckpt"]:
        raise ValueError("metric=bpd needs ckpt=PATH: bits/dim is a property of a model")
    if args["samples"] or args["ref"] or args["guidance"] is not None:
        raise ValueError("metric=bpd scores a model on real data (ckpt= and data=); samples=, ref= and guidance= do not apply")
    device = resolve_device(args["device"])
    module = load_module(args["ckpt"], str(device), bool(args["trust_checkpoint"]))
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


# ---- PSNR / SSIM of an image-conditioned model ----------------------------------------------
def run_restoration(args: dict[str, Any]) -> dict[str, Any]:
    """Restore n images of the data's split (val) from their conditions; score against them."""
    from ddpm_lightning.metrics.restoration import restoration_scores

    if not args["ckpt"] or args["samples"] or args["ref"]:
        raise ValueError("metric=psnr/ssim needs ckpt=PATH (an image-conditioned model) and data=NAME; samples= and ref= do not apply")
    module = load_module(args["ckpt"], str(resolve_device(args["device"])), bool(args["trust_checkpoint"]))
    if getattr(module.conditioning, "type", None) != "image":
        raise ValueError("metric=psnr/ssim scores a model trained with conditioning=image against the ground truth; this one is not image-conditioned")
    spec = sampler_spec(args["cfg"], module.hparams.sampler)
    module.make_sampler(spec)  # a bad sampler option fails here, before any work
    guided = guidance_record(module, args["guidance"])  # w != 1 needs a model trained with p_uncond > 0
    dm = get_datamodule(args, "PSNR/SSIM")
    check_same_shape(tuple(module.data_shape), tuple(dm.data_shape), f"data {dm.name!r}")
    split = args["split"] or "val"
    n = args["n"] or len(dm.split_indices(split))
    scores = restoration_scores(module, dm.real_samples(n, split), args["seed"], args["batch_size"], sampler=spec,
                                guidance_scale=args["guidance"])
    return {"metric": args["metric"], **scores, "task": module.conditioning.task, "data": dm.name, "split": split,
            "seed": args["seed"], "sampler": sampler_summary(spec), **guided, "ckpt": str(args["ckpt"])}


def run(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate as `cfg` (a composed conf/evaluate.yaml) says; write the JSON to `out`, or to
    `out_dir/result.json` (the job's directory) when `out` is not given."""
    args = check_args(cfg)
    args["cfg"] = cfg
    set_host_malloc(args["host_malloc"])  # CPU sampling steps fault their memory back in otherwise
    start = time.perf_counter()
    if set(args["metric"]) <= RESTORATION:
        result = run_restoration(args)
    else:
        result = run_bpd(args) if args["metric"] == ["bpd"] else run_fid(args)
    bad = {k: result[k] for k in ("fid", "kid", "kid_std", "bpd", "psnr", "ssim") if k in result and not math.isfinite(result[k])}
    if bad:
        raise ValueError(f"the result is not finite ({', '.join(f'{k}={v}' for k, v in bad.items())}): NaN/Inf samples, "
                         "features or model outputs (a diverged checkpoint?); nothing was written")
    result["seconds"] = round(time.perf_counter() - start, 1)
    shown = {k: v for k, v in result.items() if k not in ("timesteps", "terms_bpd")}  # long lists: file only
    print(json.dumps(shown, indent=2))
    out = Path(args["out"]) if args["out"] else (out_dir / "result.json" if out_dir is not None else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str]) -> dict[str, Any]:
    """The command from Python: `main(["samples=A.npz", "data=digits"])` -> the result (the JSON
    is written only with out=FILE)."""
    return run(compose("evaluate", argv))


def _job(cfg: DictConfig) -> None:
    if cfg.out and is_multirun():
        raise ValueError(
            f"out={cfg.out} names one file, but -m runs several jobs: leave out= unset (each job "
            "writes result.json in its own directory, multirun/evaluate/<date>_<time>/<job>/)"
        )
    run(cfg, job_dir())


if __name__ == "__main__":
    run_command("evaluate", _job)
