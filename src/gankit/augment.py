"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

D overfits a small dataset quickly. DiffAugment shows D only augmented images,
reals and fakes alike, in both players' steps; since every operation is
differentiable, G still gets gradients through it, and since fakes are augmented
the same way, G is not pushed to imitate the augmentations. Each image gets its own
random parameters, drawn from the global torch RNG (so resumed runs replay them).

Policies, combined with commas ("color,translation,cutout"), on images in [-1, 1]:
    color        brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]
    translation  shift by up to 1/8 of the size, zero-padded
    cutout       zero a square of half the size at a random place
All are written with indexing and arithmetic only, so gradient penalties (which
differentiate twice) work through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _rand(x: Tensor) -> Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)  # (B, 1, 1, 1)


def color(x: Tensor) -> Tensor:
    x = x + (_rand(x) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x) * 2) + mean  # saturation (a no-op on one channel)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x) + 0.5) + mean  # contrast


def _grid(x: Tensor) -> tuple[Tensor, Tensor]:
    B, _, H, W = x.shape
    gy, gx = torch.meshgrid(
        torch.arange(H, device=x.device), torch.arange(W, device=x.device), indexing="ij"
    )
    return gy.expand(B, H, W), gx.expand(B, H, W)  # (B, H, W) row and column of each pixel


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    B, _, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (B, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (B, 1, 1), device=x.device)
    gy, gx = _grid(x)
    # Read pixel (y + dy, x + dx) of the image padded by one zero pixel; clamping lands
    # every out-of-range read on that zero border.
    gy = (gy + dy + 1).clamp(0, H + 1)
    gx = (gx + dx + 1).clamp(0, W + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # (B, H + 2, W + 2, C)
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded[b, gy, gx].permute(0, 3, 1, 2)  # (B, C, H, W)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    B, _, H, W = x.shape
    ch, cw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    cy = torch.randint(0, H + (1 - ch % 2), (B, 1, 1), device=x.device)  # square centres
    cx = torch.randint(0, W + (1 - cw % 2), (B, 1, 1), device=x.device)
    gy, gx = _grid(x)
    inside = ((gy - cy).abs() * 2 < ch) & ((gx - cx).abs() * 2 < cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTATIONS = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> (). Refuses unknown names."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(
                f"unknown augmentation {name!r}: choose from {', '.join(AUGMENTATIONS)}"
            )
    return names


def diff_augment(x: Tensor, names: tuple[str, ...]) -> Tensor:
    for name in names:
        x = AUGMENTATIONS[name](x)
    return x.contiguous()
