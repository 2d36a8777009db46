"""Toy targets: shapes, moments, normalised densities and the optimal discriminator."""

from __future__ import annotations

import math

import pytest
import torch

from gankit.toy import (
    MIXTURES,
    GaussianMixture1D,
    GaussianMixture2D,
    gaussian_1d,
    optimal_discriminator,
)


def test_ring_and_grid_layout():
    ring, grid = MIXTURES["ring"](), MIXTURES["grid"]()
    assert ring.modes.shape == (8, 2) and ring.std == 0.01
    torch.testing.assert_close(ring.modes.norm(dim=1), torch.ones(8))
    gaps = (ring.modes - ring.modes.roll(1, dims=0)).norm(dim=1)  # neighbours evenly spaced
    torch.testing.assert_close(gaps, torch.full((8,), 2 * math.sin(math.pi / 8)))
    assert grid.modes.shape == (25, 2) and grid.std == 0.05
    expected = {(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
    assert {tuple(p) for p in grid.modes.round().int().tolist()} == expected


@pytest.mark.parametrize("name", list(MIXTURES))
def test_samples_spread_by_std_around_uniformly_chosen_modes(name):
    target = MIXTURES[name]()
    x = target.sample(20_000, torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    nearest = torch.cdist(x, target.modes).argmin(1)
    residual = x - target.modes[nearest]
    assert residual.std(0).sub(target.std).abs().max() < 0.05 * target.std
    counts = torch.bincount(nearest, minlength=len(target.modes)).float()
    expected = 20_000 / len(target.modes)
    assert (counts - expected).abs().max() < 5 * math.sqrt(expected)


def test_sampling_is_reproducible_from_the_generator():
    target = MIXTURES["grid"]()
    a = target.sample(10, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, target.sample(10, torch.Generator().manual_seed(1)))


def test_2d_density_integrates_to_one_and_matches_a_single_gaussian():
    wide = GaussianMixture2D(modes=torch.tensor([[0.0, 0.0], [1.0, -1.0]]), std=0.5)
    step = 0.04
    axis = torch.arange(-5, 5, step) + step / 2
    xy = torch.cartesian_prod(axis, axis)
    assert wide.prob(xy).sum().item() * step**2 == pytest.approx(1.0, abs=1e-3)
    single = GaussianMixture2D(modes=torch.tensor([[0.5, 0.5]]), std=0.3)
    x = torch.randn(5, 2)
    expected = torch.distributions.MultivariateNormal(
        torch.tensor([0.5, 0.5]), covariance_matrix=0.09 * torch.eye(2)
    ).log_prob(x)
    torch.testing.assert_close(single.log_prob(x), expected)


def test_1d_mixture_moments_and_density():
    target = GaussianMixture1D(means=(-2.0, 3.0), stds=(0.5, 1.0), weights=(1.0, 3.0))
    x = target.sample(200_000, torch.Generator().manual_seed(2))
    assert x.shape == (200_000, 1)
    mean = 0.25 * -2 + 0.75 * 3  # sum w mu
    var = 0.25 * (0.25 + 4) + 0.75 * (1 + 9) - mean**2  # sum w (s^2 + mu^2) - mean^2
    assert x.mean().item() == pytest.approx(mean, abs=0.02)
    assert x.var().item() == pytest.approx(var, rel=0.01)
    grid = torch.linspace(-10, 12, 20_001)
    assert torch.trapezoid(target.prob(grid), grid).item() == pytest.approx(1.0, abs=1e-5)
    g = gaussian_1d(1.0, 2.0)
    expected = torch.distributions.Normal(1.0, 2.0).log_prob(grid[:5])
    torch.testing.assert_close(g.log_prob(grid[:5]), expected)
    torch.testing.assert_close(g.log_prob(grid[:5].unsqueeze(1)), expected)


def test_optimal_discriminator_maximises_the_gan_value():
    """D* maximises p_data log D + p_model log(1 - D) pointwise, and is 1/2 where the two agree."""
    x = torch.linspace(-2, 3, 101)
    p_data, p_model = gaussian_1d(0.0, 1.0).prob(x), gaussian_1d(1.0, 0.7).prob(x)
    d_star = optimal_discriminator(p_data, p_model)
    assert ((d_star > 0) & (d_star < 1)).all()

    def value(d):
        return p_data * d.log() + p_model * (1 - d).log()

    for eps in (-0.05, -0.01, 0.01, 0.05):
        assert (value(d_star) >= value((d_star + eps).clamp(1e-6, 1 - 1e-6)) - 1e-7).all()
    torch.testing.assert_close(optimal_discriminator(p_data, p_data), torch.full_like(x, 0.5))
    assert optimal_discriminator(torch.zeros(1), torch.zeros(1)).item() == 0.5
