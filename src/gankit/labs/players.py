"""The labs' players: small MLPs on vectors, nothing but `forward`.

G maps z (B, nz) to x (B, dim) with a linear output, so it can place points anywhere
and as sharply as it likes. D maps a pack of `pack` samples, concatenated into
(B, pack * dim), to one logit (or one critic score for WGAN-GP); pack = 1 is the
ordinary discriminator, pack = m is PacGAN's (Lin et al., 2018).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(widths: list[int], act: nn.Module) -> nn.Sequential:
    """Linear layers of `widths` (in, hidden..., out) with `act` between them, none at the end."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act)
    return nn.Sequential(*layers)


class Generator(nn.Module):
    def __init__(
        self,
        nz: int,  # size of z
        dim: int,  # size of x: 1 or 2
        width: int,  # hidden units per layer
        depth: int,  # hidden layers
    ):
        super().__init__()
        self.nz, self.dim = nz, dim
        self.net = mlp([nz] + [width] * depth + [dim], nn.ReLU())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, nz) -> (B, dim)


class Discriminator(nn.Module):
    def __init__(
        self,
        dim: int,  # size of one sample
        width: int,  # hidden units per layer
        depth: int,  # hidden layers
        pack: int = 1,  # samples per D input; 1 = no packing
    ):
        super().__init__()
        self.dim, self.pack = dim, pack
        self.net = mlp([pack * dim] + [width] * depth + [1], nn.LeakyReLU(0.2))

    def forward(self, x: Tensor) -> Tensor:
        """(B * pack, dim) samples -> (B,) logits, each judging `pack` consecutive samples."""
        return self.net(x.reshape(-1, self.pack * self.dim)).squeeze(1)  # (B, pack * dim) -> (B,)


def sample_z(n: int, nz: int, kind: str = "normal", generator: torch.Generator | None = None):
    """(n, nz) latents: standard normal, or uniform on [-1, 1]."""
    if kind == "normal":
        return torch.randn(n, nz, generator=generator)
    if kind == "uniform":
        return 2 * torch.rand(n, nz, generator=generator) - 1
    raise ValueError(f"unknown z distribution {kind!r}: normal | uniform")
