"""Fréchet distance between Gaussian fits of two feature sets (Heusel et al., 2017).

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

With Inception-v3 pool features this is FID; gankit computes it on its own
classifier's features and names it after that network (`fd_mnistnet`), because
the numbers are not comparable with published FIDs.
"""

from __future__ import annotations

import torch


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    x = feats.detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (N, D) features with N >= 2, got shape {tuple(x.shape)}")
    mu = x.mean(0)  # (D,)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)  # (D,), (D, D)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues count as 0."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2), computed in float64 without scipy.

    S1 S2 is not symmetric, but it is similar to A = sqrt(S1) S2 sqrt(S1), which is
    symmetric PSD, so tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of A). Two
    symmetric eigen-decompositions replace scipy's sqrtm and never produce the
    complex parts sqrtm returns for nearly singular covariances. The result is
    clamped at 0 against rounding.
    """
    mu1, mu2, s1, s2 = (t.detach().to("cpu", torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    diff = mu1 - mu2
    root1 = _sqrt_psd(s1)
    a = root1 @ s2 @ root1  # (D, D) symmetric PSD, similar to S1 S2
    tr_covmean = torch.linalg.eigvalsh((a + a.T) / 2).clamp(min=0).sqrt().sum()
    fd = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return max(fd.item(), 0.0)


def fd_features(fake: torch.Tensor, real: torch.Tensor) -> float:
    """FD between Gaussian fits of (N, D) fake and (M, D) real features."""
    return frechet_distance(*gaussian_stats(fake), *gaussian_stats(real))
