"""The MLP GAN of the classic tutorials (Goodfellow et al. 2014, "Generative Adversarial Nets").

Both players are multilayer perceptrons on flattened images:

    G: z (B, nz) ~ N(0, I) -> [Linear -> BatchNorm1d -> ReLU] x 4 -> Linear -> Tanh -> (B, C, H, W)
    D: x (B, C, H, W) -> [Linear -> LeakyReLU(0.2) -> Dropout] x 3 -> Linear -> logit (B,)

G's images live in [-1, 1], like the data. D returns a logit; its probability is
sigmoid(logit), and the losses in `gankit.losses` work on logits.

Conditional (`cond`, see gankit.models.layers): G reads [z, embed(y)]; with
`concat` D reads [x, one_hot(y)], with `projection` or `acgan` its head uses y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from gankit.game import adversarial_step
from gankit.models.layers import (
    Head,
    LabelledLatent,
    check_conditioning,
    gaussian_noise,
    generate_with_g,
    label_count,
    one_hot,
    spectral_norm_all,
)


@dataclass
class Config:
    family: str = "mlp"
    nz: int = 64  # size of the latent z ~ N(0, I)
    g_widths: tuple[int, ...] = (128, 256, 512, 1024)  # hidden widths of G's blocks
    d_widths: tuple[int, ...] = (512, 256, 128)  # hidden widths of D's blocks
    d_dropout: float = 0.3  # dropout after each D block; 0 = none
    leak: float = 0.2  # negative slope of D's LeakyReLU
    cond: str = "none"  # labels: none | concat | projection | acgan (see gankit.models.layers)
    embed_dim: int = 10  # size of G's label embedding (conditional only)
    spectral_norm: bool = False  # spectral normalisation of D's layers (Miyato et al. 2018)

    def __post_init__(self):
        check_conditioning(self.cond, self.embed_dim)
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
    def __init__(
        self,
        nz: int,
        widths: tuple[int, ...],
        img_shape: tuple[int, int, int],
        num_classes: int = 0,  # 0 = unconditional
        embed_dim: int = 10,
    ):
        super().__init__()
        self.img_shape = tuple(img_shape)
        self.input = LabelledLatent(num_classes, embed_dim)
        dims = (nz + self.input.extra, *widths)
        self.net = nn.Sequential(
            *(generator_block(a, b) for a, b in pairwise(dims)),
            nn.Linear(dims[-1], math.prod(img_shape)),
            nn.Tanh(),
        )

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.net(self.input(z, labels))
        return h.view(z.shape[0], *self.img_shape)  # (B, nz) -> (B, C, H, W) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(
        self,
        widths: tuple[int, ...],
        img_shape: tuple[int, int, int],
        leak: float,
        dropout: float,
        num_classes: int = 0,  # 0 = unconditional
        cond: str = "none",
    ):
        super().__init__()
        self.num_classes = num_classes if cond == "concat" else 0  # one-hot inputs
        dims = (math.prod(img_shape) + self.num_classes, *widths)
        self.net = nn.Sequential(
            *(discriminator_block(a, b, leak, dropout) for a, b in pairwise(dims))
        )
        self.head = Head(dims[-1], num_classes, cond)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = x.flatten(1)  # (B, C*H*W)
        if self.num_classes:
            h = torch.cat([h, one_hot(labels, self.num_classes)], dim=1)
        return self.head(self.net(h), labels)  # (B,) logits [, (B, K) class logits]


def build(
    cfg: Config, img_shape: tuple[int, int, int], num_classes: int = 0
) -> dict[str, nn.Module]:
    """The players, G and D, for images of shape (C, H, W) and `num_classes` labels."""
    k = label_count(cfg.cond, num_classes)
    D = Discriminator(cfg.d_widths, img_shape, cfg.leak, cfg.d_dropout, k, cfg.cond)
    return {
        "G": Generator(cfg.nz, cfg.g_widths, img_shape, k, cfg.embed_dim),
        "D": spectral_norm_all(D) if cfg.spectral_norm else D,
    }


noise = gaussian_noise  # z ~ N(0, I), (n, nz)
generate = generate_with_g  # G(z, labels)
step = adversarial_step  # the standard alternating D/G game
