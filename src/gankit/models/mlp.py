"""The MLP GAN of the classic tutorials (Goodfellow et al. 2014, "Generative Adversarial Nets").

Both players are multilayer perceptrons on flattened images:

    G: z (B, nz) ~ N(0, I) -> [Linear -> BatchNorm1d -> ReLU] x 4 -> Linear -> Tanh -> (B, C, H, W)
    D: x (B, C, H, W) -> [Linear -> LeakyReLU(0.2) -> Dropout] x 3 -> Linear -> logit (B,)

G's images live in [-1, 1], like the data. D returns a logit; its probability is
sigmoid(logit), and the losses in `gankit.losses` work on logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from gankit.game import adversarial_step


@dataclass
class Config:
    family: str = "mlp"
    nz: int = 64  # size of the latent z ~ N(0, I)
    g_widths: tuple[int, ...] = (128, 256, 512, 1024)  # hidden widths of G's blocks
    d_widths: tuple[int, ...] = (512, 256, 128)  # hidden widths of D's blocks
    d_dropout: float = 0.3  # dropout after each D block; 0 = none
    leak: float = 0.2  # negative slope of D's LeakyReLU

    def __post_init__(self):
        if self.nz < 1 or not self.g_widths or not self.d_widths:
            raise ValueError("nz must be >= 1 and g_widths, d_widths non-empty")
        if any(w < 1 for w in (*self.g_widths, *self.d_widths)):
            raise ValueError("layer widths must be >= 1")
        if not 0 <= self.d_dropout < 1:
            raise ValueError(f"d_dropout must be in [0, 1), got {self.d_dropout}")


def generator_block(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.BatchNorm1d(out_features),
        nn.ReLU(inplace=True),
    )


def discriminator_block(
    in_features: int, out_features: int, leak: float, dropout: float
) -> nn.Sequential:
    layers = [nn.Linear(in_features, out_features), nn.LeakyReLU(leak, inplace=True)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    def __init__(self, nz: int, widths: tuple[int, ...], img_shape: tuple[int, int, int]):
        super().__init__()
        self.img_shape = tuple(img_shape)
        dims = (nz, *widths)
        self.net = nn.Sequential(
            *(generator_block(a, b) for a, b in pairwise(dims)),
            nn.Linear(dims[-1], math.prod(img_shape)),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.img_shape)  # (B, nz) -> (B, C, H, W) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(
        self, widths: tuple[int, ...], img_shape: tuple[int, int, int], leak: float, dropout: float
    ):
        super().__init__()
        dims = (math.prod(img_shape), *widths)
        self.net = nn.Sequential(
            *(discriminator_block(a, b, leak, dropout) for a, b in pairwise(dims)),
            nn.Linear(dims[-1], 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)  # (B, C, H, W) -> (B,) logits


def build(
    cfg: Config, img_shape: tuple[int, int, int], num_classes: int = 0
) -> dict[str, nn.Module]:
    """The players, G and D, for images of shape (C, H, W). The MLP GAN ignores labels."""
    return {
        "G": Generator(cfg.nz, cfg.g_widths, img_shape),
        "D": Discriminator(cfg.d_widths, img_shape, cfg.leak, cfg.d_dropout),
    }


def noise(
    cfg: Config, n: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """z ~ N(0, I), shaped (n, nz), drawn from `generator` (which lives on `device`)."""
    return torch.randn(n, cfg.nz, generator=generator, device=device)


def generate(nets: dict[str, nn.Module], z: Tensor) -> Tensor:
    """Images in [-1, 1] from latents z, (B, nz) -> (B, C, H, W)."""
    return nets["G"](z)


step = adversarial_step  # the standard alternating D/G game
