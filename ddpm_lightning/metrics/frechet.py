"""The Fréchet distance between two Gaussians, the number behind FID, in float64 NumPy.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))      (Fréchet 1957; Heusel et al. 2017)

Two ways to get tr((S1 S2)^(1/2)), both in float64:

- "sqrtm" (default): scipy.linalg.sqrtm of S1 S2, handled exactly as pytorch-fid does: if the
  result is not finite, add eps * I to both covariances and retry; if it comes back complex, the
  imaginary part must be numerical noise (diagonal |imag| <= 1e-3) and is dropped, otherwise a
  ValueError is raised. This reproduces pytorch-fid / TTUR numbers.
- "eigh": S1 S2 is similar to the symmetric PSD matrices L^T S2 L (S1 = L L^T, Cholesky) and
  S1^(1/2) S2 S1^(1/2) (when S1 is singular), so the trace is the sum of square roots of their
  (clipped to >= 0) eigenvalues. No complex arithmetic at all; exact also when the covariances
  are singular (fewer samples than dimensions), and 5-10x faster than "sqrtm" at 2048-d.

Estimates from n samples of d-dim features are biased and noisy, and for n <= d the sample
covariance is singular: `check_sample_size` warns (or refuses) before such numbers are reported.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

FRECHET_METHODS = ("sqrtm", "eigh")
SMALL_SAMPLE_POLICIES = ("warn", "error", "ignore")


class SmallSampleWarning(UserWarning):
    """Fewer samples than feature dimensions: the covariance and hence the FID are unreliable."""


def check_sample_size(n: int, dim: int, what: str = "features", policy: str = "warn") -> None:
    """Refuse n < 2 (no covariance); warn about, or with policy='error' refuse, n < dim."""
    if policy not in SMALL_SAMPLE_POLICIES:
        raise ValueError(f"small-sample policy must be one of {SMALL_SAMPLE_POLICIES}, got {policy!r}")
    if n < 2:
        raise ValueError(f"need at least 2 samples of {what} to estimate a covariance, got {n}")
    if n >= dim or policy == "ignore":
        return
    message = (
        f"{n} samples of {dim}-d {what}: the sample covariance has rank <= {n - 1} < {dim}, so the "
        f"Fréchet distance is dominated by estimation bias and noise and is not comparable across "
        f"runs or sample counts. Use at least {dim} samples (published Inception FIDs use 10k-50k)."
    )
    if policy == "error":
        raise ValueError(message)
    warnings.warn(message, SmallSampleWarning, stacklevel=2)


def _as_stats(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: expected mu of shape (D,) and sigma of shape (D, D), got {mu.shape} and {sigma.shape}"
        )
    return mu, sigma


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # Product nearly singular: pytorch-fid's fix, shift both covariances by eps * I.
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            worst = np.max(np.abs(covmean.imag))
            raise ValueError(f"sqrtm of the covariance product has imaginary component {worst:.3g} > 1e-3")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # torch's LAPACK: 3-4x faster than numpy.linalg.eigh on 2048 x 2048 here.
    s1, s2 = torch.from_numpy(sigma1), torch.from_numpy(sigma2)  # float64
    chol, info = torch.linalg.cholesky_ex(s1)
    if info == 0:
        # S1 = L L^T positive definite: L^T S2 L is symmetric and similar to S1 S2 (one
        # eigvalsh, no eigenvectors: the fast path for n > D samples).
        inner = chol.T @ s2 @ chol
    else:
        # Singular S1 (n <= D samples): S1^(1/2) S2 S1^(1/2) from S1's eigendecomposition.
        evals1, evecs1 = torch.linalg.eigh(s1)
        root1 = (evecs1 * evals1.clamp(min=0).sqrt()) @ evecs1.T  # S1^(1/2), symmetric PSD
        inner = root1 @ s2 @ root1
    evals = torch.linalg.eigvalsh((inner + inner.T) / 2)  # symmetrise away round-off
    return float(evals.clamp(min=0).sqrt().sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "sqrtm", eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    Args:
        mu1, mu2: means, shape (D,). sigma1, sigma2: covariances, shape (D, D).
        method: "sqrtm" (pytorch-fid's computation) or "eigh" (symmetric eigenvalues).
        eps: diagonal offset used by "sqrtm" when the product is singular.
    """
    if method not in FRECHET_METHODS:
        raise ValueError(f"method must be one of {FRECHET_METHODS}, got {method!r}")
    mu1, sigma1 = _as_stats(mu1, sigma1, "first distribution")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second distribution")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
