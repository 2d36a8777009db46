"""Toy targets with known densities: 2D Gaussian mixtures and 1D Gaussian mixtures.

The 2D `ring` and `grid` are the mode-collapse benchmarks of Unrolled GAN
(Metz et al., 2017), VEEGAN and PacGAN; `gankit.metrics.mixture` scores samples
against them. The 1D targets come with `prob`, so the optimal discriminator
D*(x) = p_data / (p_data + p_model) (Goodfellow et al., 2014) can be drawn exactly.

Every `sample(n, generator)` returns (n, dim) float32, and every `log_prob`
takes (n, dim) (or (n,) in 1D) and returns (n,).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class GaussianMixture2D:
    """An equal-weight mixture of isotropic 2D Gaussians sharing one standard deviation."""

    modes: torch.Tensor  # (K, 2) component means
    std: float  # per-coordinate standard deviation of every component

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 2) points: a uniformly chosen mode plus N(0, std^2 I) noise."""
        k = torch.randint(0, len(self.modes), (n,), generator=generator)
        return self.modes[k] + self.std * torch.randn(n, 2, generator=generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 2) -> (n,) log density: logsumexp over modes of log N(x; mode, std^2 I) - log K."""
        sq = torch.cdist(x.double(), self.modes.double()) ** 2  # (n, K)
        log_comp = -sq / (2 * self.std**2) - math.log(2 * math.pi * self.std**2)
        return (torch.logsumexp(log_comp, dim=1) - math.log(len(self.modes))).to(x.dtype)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x).exp()


def ring(n_modes: int = 8, radius: float = 1.0, std: float = 0.01) -> GaussianMixture2D:
    """`n_modes` Gaussians evenly spaced on a circle, the first at angle 0."""
    angles = torch.arange(n_modes) * (2 * math.pi / n_modes)
    modes = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (K, 2)
    return GaussianMixture2D(modes=modes, std=std)


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> GaussianMixture2D:
    """side x side Gaussians on a centred square lattice; the default is {-4, -2, 0, 2, 4}^2."""
    axis = (torch.arange(side) - (side - 1) / 2) * spacing  # (side,)
    modes = torch.cartesian_prod(axis, axis)  # (side^2, 2)
    return GaussianMixture2D(modes=modes.float(), std=std)


MIXTURES = {
    "ring": ring,  # 8 modes on the unit circle, std 0.01
    "grid": grid,  # 25 modes on {-4, -2, 0, 2, 4}^2, std 0.05
}


@dataclass
class GaussianMixture1D:
    """A weighted mixture of 1D Gaussians; one component is a plain Gaussian."""

    means: tuple[float, ...]
    stds: tuple[float, ...]
    weights: tuple[float, ...] = ()  # () = equal weights

    def __post_init__(self) -> None:
        if not self.weights:
            self.weights = (1.0,) * len(self.means)
        if not len(self.means) == len(self.stds) == len(self.weights):
            raise ValueError("means, stds and weights must have the same length")
        total = sum(self.weights)
        self.weights = tuple(w / total for w in self.weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, 1) draws."""
        k = torch.multinomial(torch.tensor(self.weights), n, replacement=True, generator=generator)
        means, stds = torch.tensor(self.means)[k], torch.tensor(self.stds)[k]
        return (means + stds * torch.randn(n, generator=generator)).unsqueeze(1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1) or (n,) -> (n,) log density."""
        x = x.reshape(-1, 1).double()  # (n, 1)
        mu, sd = torch.tensor(self.means).double(), torch.tensor(self.stds).double()  # (K,)
        log_w = torch.tensor(self.weights).double().log()
        log_comp = -0.5 * ((x - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)  # (n, K)
        return torch.logsumexp(log_w + log_comp, dim=1).float()

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x).exp()


def gaussian_1d(mean: float = 0.0, std: float = 1.0) -> GaussianMixture1D:
    return GaussianMixture1D(means=(mean,), stds=(std,))


def optimal_discriminator(p_data: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """D*(x) = p_data / (p_data + p_model), the best D against a fixed G; 0.5 where both are 0."""
    total = p_data + p_model
    return torch.where(total > 0, p_data / total.clamp(min=torch.finfo(total.dtype).tiny), 0.5)
