"""Pieces the image families share: how labels enter G and D, spectral norm, D's norms,
and the Gaussian latent with its G.

Conditioning (Mirza & Osindero 2014), chosen by a family's `cond` field:

    none        unconditional
    concat      D sees the label next to the image (a one-hot vector or label planes)
    projection  D's logit gains <embed(y), h(x)> (Miyato & Koyama 2018)
    acgan       D also predicts the class; both players add its cross-entropy (Odena et al. 2017)

G always takes the label through an embedding concatenated to z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit.errors import GankitError

CONDITIONINGS = ("none", "concat", "projection", "acgan")
D_NORMS = ("batch", "layer", "instance", "none")


def label_count(cond: str, num_classes: int) -> int:
    """The classes a model conditions on: 0 when unconditional. Refuses a conditional
    model on a dataset without labels."""
    if cond == "none":
        return 0
    if not num_classes:
        raise GankitError(f"cond {cond!r} needs a labelled dataset; this one has no labels")
    return num_classes


def check_conditioning(cond: str, embed_dim: int) -> None:
    if cond not in CONDITIONINGS:
        raise ValueError(f"unknown cond {cond!r}: choose one of {', '.join(CONDITIONINGS)}")
    if embed_dim < 1:
        raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")


class LabelledLatent(nn.Module):
    """G's input: z, or [z, embed(y)] for a conditional G. (B, nz) -> (B, nz + embed_dim)."""

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None

    @property
    def extra(self) -> int:
        return self.embed.embedding_dim if self.embed is not None else 0

    def forward(self, z: Tensor, labels: Tensor | None) -> Tensor:
        if self.embed is None:
            return z
        return torch.cat([z, self.embed(labels)], dim=1)


class Head(nn.Module):
    """D's last layer on features h (B, F): a logit (B,), conditioned by projection, or
    (logit, class logits (B, K)) with an auxiliary classifier."""

    def __init__(self, features: int, num_classes: int, cond: str):
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if cond == "projection" else None
        self.classify = nn.Linear(features, num_classes) if cond == "acgan" else None

    def forward(self, h: Tensor, labels: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
        logits = self.linear(h).squeeze(1)  # (B,)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * h).sum(1)  # + <embed(y), h>
        if self.classify is not None:
            return logits, self.classify(h)
        return logits


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation (Karras et al. 2018): one more feature plane,
    the mean over features and pixels of the std across each group of `group` samples, so
    D can tell a batch of too-similar fakes from a batch of reals.

    Groups are consecutive samples: D scores reals and fakes concatenated, and groups that
    do not straddle them need a batch divisible by `group` (checked where the batch is known).
    (B, C, H, W) -> (B, C + 1, H, W)."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        g = min(self.group, b)
        if b % g:
            raise GankitError(f"minibatch std: a batch of {b} does not split into groups of {g}")
        y = x.float().reshape(b // g, g, c, h, w)  # (B/g, g, C, H, W), consecutive groups
        std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt()  # (B/g, C, H, W)
        s = std.mean(dim=(1, 2, 3)).to(x.dtype)  # (B/g,)
        plane = s.repeat_interleave(g)[:, None, None, None].expand(b, 1, h, w)
        return torch.cat([x, plane], dim=1)


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    return F.one_hot(labels, num_classes).float()  # (B,) -> (B, K)


def spectral_norm_all(net: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every Linear, Conv and Embedding weight."""
    for module in list(net.modules()):
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            nn.utils.parametrizations.spectral_norm(module)
    return net


def d_norm_layer(kind: str, channels: int) -> nn.Module:
    """D's normalisation: BatchNorm (DCGAN), LayerNorm over (C, H, W), InstanceNorm, or none.
    A critic with a gradient penalty must not use BatchNorm (it mixes samples)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # one group = LayerNorm over (C, H, W) per image
    if kind == "instance":
        return nn.GroupNorm(channels, channels)  # one group per channel = InstanceNorm, affine
    return nn.Identity()


def layout(img_size: int, family: str) -> tuple[int, int]:
    """(base, n) with img_size = base * 2^n and base 3..7: a convolutional G starts at
    base x base and doubles n times (28 = 7 * 2^2, 32 = 4 * 2^3, 64 = 4 * 2^4)."""
    base, n = img_size, 0
    while base % 2 == 0 and base > 7:
        base, n = base // 2, n + 1
    if n < 1 or not 3 <= base <= 7:
        raise GankitError(
            f"{family} needs an image size of base * 2^n with base 3..7 and n >= 1 "
            f"(28, 32, 48, 64, ...), got {img_size}: set data.img_size"
        )
    return base, n


def gaussian_noise(
    cfg, n: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """z ~ N(0, I), shaped (n, cfg.nz), drawn from `generator` (which lives on `device`)."""
    return torch.randn(n, cfg.nz, generator=generator, device=device)


def generate_with_g(nets: dict[str, nn.Module], z: Tensor, labels: Tensor | None = None) -> Tensor:
    """Images in [-1, 1] from latents z (B, nz) and, when conditional, labels (B,)."""
    return nets["G"](z, labels)
