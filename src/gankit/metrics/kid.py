"""Kernel distance (KID, Binkowski et al., 2018): an unbiased MMD^2 with a cubic kernel.

    k(x, y) = (x . y / d + 1)^3

Unlike FD it assumes no Gaussian shape and its estimator is unbiased, so small
sample sets do not inflate it; it can come out slightly negative when the two
sets share a distribution. As in the paper, it is averaged over random subsets.
"""

from __future__ import annotations

import math

import torch


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) kernel matrix (x . y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 between (m, D) and (n, D) samples: the diagonals k(x_i, x_i) are left out."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sum_xx = kxx.sum() - kxx.diagonal().sum()  # sum over i != j
    sum_yy = kyy.sum() - kyy.diagonal().sum()
    return (sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * kxy.sum() / (m * n)).item()


def kid(
    fake: torch.Tensor,
    real: torch.Tensor,
    n_subsets: int = 100,
    subset_size: int = 0,  # 0 = min(1000, N_fake // 2, N_real // 2)
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """KID between (N, D) fake and (M, D) real features: (mean, std) over `n_subsets` subsets.

    Each subset draws `subset_size` rows from each set without replacement. The
    default caps the size at half of each set so that subsets differ and their
    spread means something (with subsets as large as the set, every estimate
    is the same). The second number is the standard deviation of the subset
    estimates as torch-fidelity reports it (np.std: divided by n_subsets, not
    n_subsets - 1): because subsets overlap it is not a standard error of the mean
    (std / sqrt(n_subsets) would be too optimistic).
    """
    x = fake.detach().to("cpu", torch.float64)
    y = real.detach().to("cpu", torch.float64)
    m = subset_size or min(1000, x.shape[0] // 2, y.shape[0] // 2)
    if m < 2 or m > min(x.shape[0], y.shape[0]):
        raise ValueError(f"subset size {m} does not fit sets of {x.shape[0]} and {y.shape[0]} rows")
    gen = generator or torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(n_subsets):
        ix = torch.randperm(x.shape[0], generator=gen)[:m]
        iy = torch.randperm(y.shape[0], generator=gen)[:m]
        estimates.append(mmd2_unbiased(x[ix], y[iy]))
    mean = sum(estimates) / len(estimates)
    var = sum((e - mean) ** 2 for e in estimates) / len(estimates)  # ddof 0, as np.std
    return mean, math.sqrt(var)
