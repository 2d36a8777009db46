"""LAPGAN (Denton, Chintala, Szlam & Fergus 2015, "Deep Generative Image Models using a
Laplacian Pyramid of Adversarial Networks").

An image x is split into a Laplacian pyramid: Gaussian levels g_0 (coarsest) ... g_{L-1} = x,
each half the size of the next (g_{k-1} = down(g_k)), and band-pass residuals

    h_k = g_k - up(g_{k-1})          k = 1 .. L-1,      so  x = up(...up(g_0) + h_1...) + h_{L-1}

exactly. LAPGAN learns one GAN per level:

    level 0:   G_0(z_0) -> g_0 (e.g. 7 x 7), an MLP GAN on the coarsest images
    level k:   G_k(z_k, l_k) -> h_k, a conditional convolutional G given l_k = up(g_{k-1});
               D_k(h, l_k) judges a residual together with the coarse image it refines

Every level trains on real pyramids (G_k sees up(real g_{k-1}), never its own coarser
output), so the levels are independent GAN games in one step. Sampling walks coarse to
fine: g_0 = G_0(z_0), then g_k = l_k + G_k(z_k, l_k) with l_k = up(g_{k-1}).

down = 2 x 2 average pooling, up = bilinear interpolation. MNIST: 28 -> 14 -> 7; 32 x 32
images (folders, CIFAR-10): 32 -> 16 -> 8. With `cond` = concat, every level also
sees the class: the coarse MLP GAN as in gankit.models.mlp, the finer levels as one
extra input plane from a label embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit.errors import GankitError
from gankit.game import adversarial_step, generator_names
from gankit.models import mlp
from gankit.models.layers import label_count

CONDITIONINGS = ("none", "concat")


@dataclass
class Config:
    family: str = "lapgan"
    levels: int = 3  # pyramid levels, coarsest first: 3 = 7, 14, 28 for MNIST
    nz: int = 64  # size of each level's latent z_k ~ N(0, I)
    coarse_widths: tuple[int, ...] = (256, 512)  # level 0's MLP G widths (D: reversed)
    ngf: int = 64  # channels of the finer levels' G convolutions
    ndf: int = 64  # channels of the finer levels' D's first convolution (doubled in the second)
    cond: str = "none"  # none | concat: every level also sees the class label
    embed_dim: int = 10  # size of the coarse G's label embedding (conditional only)

    def __post_init__(self):
        if self.levels < 2:
            raise ValueError(
                f"levels must be >= 2 (one coarse GAN and a finer one), got {self.levels}"
            )
        if min(self.nz, self.ngf, self.ndf, self.embed_dim, *self.coarse_widths) < 1:
            raise ValueError("nz, ngf, ndf, embed_dim and coarse_widths must be >= 1")
        if self.cond not in CONDITIONINGS:
            raise ValueError(
                f"LAPGAN's cond must be one of {', '.join(CONDITIONINGS)}, got {self.cond!r}"
            )


def check(cfg: Config, train_cfg) -> None:
    """Options of the image families that do not carry over to a pyramid of GANs."""
    if train_cfg.augment:
        raise GankitError(
            "train.augment would change LAPGAN's residuals but not the coarse images they "
            "are judged with: drop --augment"
        )


# ---- the Laplacian pyramid ----------------------------------------------------------------------


def down(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2)  # (B, C, H, W) -> (B, C, H/2, W/2)


def up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)  # -> (2H, 2W)


def gaussian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """[g_0 (coarsest), ..., g_{L-1} = x]."""
    out = [x]
    for _ in range(levels - 1):
        out.insert(0, down(out[0]))
    return out


def laplacian_pyramid(x: Tensor, levels: int) -> tuple[Tensor, list[Tensor]]:
    """(g_0, [h_1, ..., h_{L-1}]) with h_k = g_k - up(g_{k-1})."""
    g = gaussian_pyramid(x, levels)
    return g[0], [g[k] - up(g[k - 1]) for k in range(1, levels)]


def reconstruct(coarse: Tensor, residuals: list[Tensor]) -> Tensor:
    """The inverse of `laplacian_pyramid`: exact, whatever `down` and `up` are."""
    x = coarse
    for h in residuals:
        x = up(x) + h
    return x


# ---- the finer levels' players ------------------------------------------------------------------


class LabelPlane(nn.Module):
    """(B,) labels -> (B, 1, H, W): a learned plane per class, or nothing when unconditional."""

    def __init__(self, num_classes: int, size: int):
        super().__init__()
        self.size = size
        self.embed = nn.Embedding(num_classes, size * size) if num_classes else None

    @property
    def channels(self) -> int:
        return 1 if self.embed is not None else 0

    def forward(self, labels: Tensor | None) -> list[Tensor]:
        if self.embed is None:
            return []
        return [self.embed(labels).view(-1, 1, self.size, self.size)]


class ResidualGenerator(nn.Module):
    """G_k: (z_k (B, nz), (l_k (B, C, H, W), labels)) -> residual h_k (B, C, H, W).

    As in the paper, the noise enters as one extra input plane beside the coarse image.
    The output is linear: residuals live in [-2, 2], not [-1, 1]. It starts at zero.
    """

    def __init__(self, nz: int, ngf: int, channels: int, size: int, num_classes: int = 0):
        super().__init__()
        self.size = size
        self.noise = nn.Linear(nz, size * size)  # z -> one (H, W) plane
        self.label = LabelPlane(num_classes, size)
        c_in = channels + 1 + self.label.channels
        self.net = nn.Sequential(
            nn.Conv2d(c_in, ngf, 5, 1, 2, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.Conv2d(ngf, ngf, 5, 1, 2, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.Conv2d(ngf, channels, 5, 1, 2),
        )
        # Start by adding no detail (the upsampled coarse image as it is), not speckle from
        # random weights: conditioned on real 14 x 14 images, the 28 x 28 level then scored
        # FD 40 after 1,000 steps, against 72 with PyTorch's default initialisation.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: Tensor, cond: tuple[Tensor, Tensor | None]) -> Tensor:
        coarse, labels = cond
        plane = self.noise(z).view(-1, 1, self.size, self.size)
        return self.net(torch.cat([coarse, plane, *self.label(labels)], dim=1))


class ResidualDiscriminator(nn.Module):
    """D_k: (h (B, C, H, W), (l_k, labels)) -> logit (B,): is h a real residual of l_k?"""

    def __init__(self, ndf: int, channels: int, size: int, num_classes: int = 0):
        super().__init__()
        self.label = LabelPlane(num_classes, size)
        c_in = 2 * channels + self.label.channels
        self.net = nn.Sequential(
            nn.Conv2d(c_in, ndf, 5, 2, 2),  # (B, ndf, H/2, W/2), rounded up
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 5, 2, 2),  # (B, 2 ndf, H/4, W/4), rounded up
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
        )
        s = (size + 3) // 4  # each stride-2 convolution rounds up: ceil(ceil(size / 2) / 2)
        self.out = nn.Linear(ndf * 2 * s * s, 1)

    def forward(self, h: Tensor, cond: tuple[Tensor, Tensor | None]) -> Tensor:
        coarse, labels = cond
        x = torch.cat([h, coarse, *self.label(labels)], dim=1)
        return self.out(self.net(x)).squeeze(1)


# ---- build / noise / generate / step ------------------------------------------------------------


def sizes(img_size: int, levels: int) -> list[int]:
    """Image size of each level, coarsest first; refuses sizes that do not halve evenly."""
    if img_size % 2 ** (levels - 1) or img_size // 2 ** (levels - 1) < 4:
        raise GankitError(
            f"LAPGAN with {levels} levels needs an image size divisible by {2 ** (levels - 1)} "
            f"with a coarsest level of at least 4 pixels, got {img_size}: set model.levels or "
            f"data.img_size"
        )
    return [img_size // 2 ** (levels - 1 - k) for k in range(levels)]


def build(
    cfg: Config, img_shape: tuple[int, int, int], num_classes: int = 0
) -> dict[str, nn.Module]:
    """G0, D0 (the coarse MLP GAN) and G_k, D_k for each finer level."""
    if len(img_shape) != 3 or img_shape[1] != img_shape[2]:
        raise GankitError(f"LAPGAN needs square images (C, H, H), got shape {tuple(img_shape)}")
    k = label_count(cfg.cond, num_classes)
    c, levels = img_shape[0], sizes(img_shape[1], cfg.levels)
    coarse = (c, levels[0], levels[0])
    nets = {
        "G0": mlp.Generator(cfg.nz, cfg.coarse_widths, coarse, k, cfg.embed_dim),
        "D0": mlp.Discriminator(
            tuple(reversed(cfg.coarse_widths)), coarse, 0.2, 0.3, k, "concat" if k else "none"
        ),
    }
    for i, size in enumerate(levels[1:], start=1):
        nets[f"G{i}"] = ResidualGenerator(cfg.nz, cfg.ngf, c, size, k)
        nets[f"D{i}"] = ResidualDiscriminator(cfg.ndf, c, size, k)
    return nets


def noise(
    cfg: Config, n: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> Tensor:
    """One z_k ~ N(0, I) per level, side by side: (n, levels * nz)."""
    return torch.randn(n, cfg.levels * cfg.nz, generator=generator, device=device)


def input_shapes(cfg: Config, img_shape: tuple[int, int, int]) -> dict[str, tuple]:
    """The parts of the latent, named: z (the coarse level's) and noise1 .. noise{L-1}, each
    (batch, nz); side by side along dim 1 they are `noise`'s (n, levels * nz)."""
    return {"z" if k == 0 else f"noise{k}": ("batch", cfg.nz) for k in range(cfg.levels)}


def _levels(nets: dict[str, nn.Module]) -> int:
    return len(generator_names(nets))  # G0, G1, ...: one per level


def pyramid_samples(
    nets: dict[str, nn.Module], z: Tensor, labels: Tensor | None = None
) -> list[Tensor]:
    """Each level's image, coarse to fine: [g_0, g_1, ..., g_{L-1}], each in [-1, 1]."""
    zs = z.chunk(_levels(nets), dim=1)
    coarsest = nets["G0"](zs[0], labels)
    return [coarsest, *refine(nets, coarsest, list(zs[1:]), labels)]


def refine(
    nets: dict[str, nn.Module], image: Tensor, zs: list[Tensor], labels: Tensor | None = None
) -> list[Tensor]:
    """The finer levels' images from an image of the level below them: one z_k (B, nz) per
    finer level, so len(zs) levels from the top, g_k = l_k + G_k(z_k, l_k), l_k = up(g_{k-1})."""
    levels = _levels(nets)
    images = []
    for k, z_k in zip(range(levels - len(zs), levels), zs, strict=True):
        coarse = up(image)
        image = (coarse + nets[f"G{k}"](z_k, (coarse, labels))).clamp(-1, 1)
        images.append(image)
    return images


def generate(nets: dict[str, nn.Module], z: Tensor, labels: Tensor | None = None) -> Tensor:
    """Images in [-1, 1]: the pyramid sampled coarse to fine."""
    return pyramid_samples(nets, z, labels)[-1]


def step(nets, opts, batches, z_fn, game, train_g: bool = True) -> dict[str, Tensor]:
    """One adversarial step per level, each on real pyramids (the levels train independently).
    The pyramids are built in float32; each level's forwards run under game.autocast()."""
    levels = _levels(nets)
    nz = nets["G1"].noise.in_features
    pyramids = [(gaussian_pyramid(real, levels), labels) for real, labels in batches]
    out = {}
    for k in range(levels):
        if k == 0:
            level_batches = [(g[0], labels) for g, labels in pyramids]
        else:  # target: the real residual; condition: the real coarser level, upsampled
            level_batches = [
                (g[k] - up(g[k - 1]), (up(g[k - 1]), labels)) for g, labels in pyramids
            ]

        def z_level(n: int, k: int = k) -> Tensor:  # this level's slice of z
            return z_fn(n)[:, k * nz : (k + 1) * nz]

        pair = {"G": nets[f"G{k}"], "D": nets[f"D{k}"]}
        if f"G{k}_ema" in nets:  # each level's G has its own moving average
            pair["G_ema"] = nets[f"G{k}_ema"]
        level_opts = {"G": opts[f"G{k}"], "D": opts[f"D{k}"]}
        for key, value in adversarial_step(
            pair, level_opts, level_batches, z_level, game, train_g
        ).items():
            out[f"{key}/level{k}"] = value
    # The finest level's game also under the usual names, for the progress bar.
    suffix = f"/level{levels - 1}"
    out |= {key[: -len(suffix)]: v for key, v in out.items() if key.endswith(suffix)}
    return out
