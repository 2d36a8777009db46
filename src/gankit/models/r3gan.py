"""R3GAN's backbone (Huang, Gokaslan, Kuleshov & Tompkin 2024, "The GAN is dead; long live
the GAN! A modern GAN baseline"), at a small scale.

The paper pairs a relativistic loss with both zero-centred penalties (`--loss rpgan --r1
GAMMA --r2 GAMMA`, gankit.losses) and shows that this loss trains a plain modern ConvNet without
the tricks earlier GANs needed: no normalisation layers, no mapping network, no
minibatch statistics. The network is a ResNet of inverted bottlenecks:

    block(x) = x + conv1x1(lrelu(gconv3x3(lrelu(conv1x1(x)))))   # C -> C*e -> C*e -> C

The 3 x 3 convolution is grouped (group_width channels a group). The last layer of each
block starts at zero and the other two are scaled by L^(-1/4) for the L blocks of that
network (Fix-up), so a deep net starts as the identity. Resampling filters with R3GAN's
[1, 2, 1] low-pass, widened to [1, 3, 3, 1] for a factor of 2 (filter, then stride 2;
zero-stuffing, then filter); 1 x 1 convolutions change the width between resolutions.

With img_size 28 (base 7, two doublings), ngf = ndf = 32:

    G: z (B, nz) -> Linear -> x basis (128, 7, 7)      # a learned 7 x 7 basis, z scales it
       -> blocks -> conv1x1 -> up     # (B, 64, 14, 14)
       -> blocks -> conv1x1 -> up     # (B, 32, 28, 28)
       -> blocks -> conv k x k        # (B, C, 28, 28), clamped to [-1, 1] when sampling
    D: x (B, C, 28, 28) -> conv k x k # (B, 32, 28, 28)
       -> blocks -> down -> conv1x1   # (B, 64, 14, 14)
       -> blocks -> down -> conv1x1   # (B, 128, 7, 7)
       -> blocks -> depthwise 7 x 7   # (B, 128): the basis read back
       -> Linear                      # logit (B,) (+ projection of the label)

`g_opening linear` replaces G's basis by DCGAN's opening, z -> Linear -> (B, 128, 7, 7).
The convolutions to and from the image are R3GAN's 1 x 1 unless `g_image_kernel` and
`d_image_kernel` widen them (k x k, odd k); `d_image_act` puts a leaky ReLU after D's.
Sizes 32 and 64 start from a 4 x 4 basis. G has no output Tanh (as in the paper): its
images are clamped to [-1, 1] when sampled, and D sees them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit.errors import GankitError
from gankit.game import adversarial_step
from gankit.models.layers import (
    Head,
    LabelledLatent,
    check_conditioning,
    gaussian_noise,
    label_count,
    layout,
    one_hot,
)

OPENINGS = ("basis", "linear")


@dataclass
class Config:
    family: str = "r3gan"
    nz: int = 64  # size of the latent z ~ N(0, I)
    ngf: int = 32  # G's width at full resolution, doubling towards the basis (up to max_width)
    ndf: int = 32  # D's width at full resolution, doubling with depth (up to max_width)
    max_width: int = 256  # cap on any stage's width
    blocks: int = 1  # residual blocks at each resolution, in G and in D
    # blocks at the image's own resolution (-1: `blocks`), in G and in D. That stage costs the
    # most, in D the most of all (R1 and R2 differentiate it twice); d_image_blocks 0 leaves D
    # only its 1 x 1 convolution from the image there. G needs its blocks: without them its
    # images are smooth upsamplings of 14 x 14 features.
    g_image_blocks: int = -1
    d_image_blocks: int = -1
    # G's opening: "basis" is R3GAN's, a learned base x base image per channel scaled by a
    # linear map of z (channel c is always the same pattern, only its strength varies);
    # "linear" maps z to all base x base x C values (DCGAN's opening), every channel's pattern
    # moving with z. At small widths the basis is a bottleneck (see the r3gan-mnist preset).
    g_opening: str = "basis"
    expansion: int = 2  # the inverted bottleneck's widening e: C -> C*e -> C
    group_width: int = 16  # channels per group of the 3 x 3 convolution
    # kernels of G's last and D's first convolution, the ones to and from the image: R3GAN's
    # 1 only mixes channels; 3 lets a player draw (G) or read (D) strokes at full size, which
    # matters when that stage has no blocks (d_image_blocks 0: see the r3gan-mnist preset).
    g_image_kernel: int = 1
    d_image_kernel: int = 1
    # a leaky ReLU after D's first convolution, as after DCGAN's. R3GAN has none: its blocks
    # at full size bring the nonlinearity. Without them (d_image_blocks 0) D's view of the
    # full-size image is linear down to 14 x 14 (convolution, low-pass, 1 x 1): this gives D
    # its only nonlinear features of the image at full size, at the cost of one activation.
    d_image_act: bool = False
    leak: float = 0.2  # negative slope of the leaky ReLUs
    cond: str = "none"  # labels: none | concat | projection | acgan (see gankit.models.layers)
    embed_dim: int = 32  # size of G's label embedding (conditional only)

    def __post_init__(self):
        check_conditioning(self.cond, self.embed_dim)
        if min(self.nz, self.ngf, self.ndf, self.max_width, self.blocks, self.expansion) < 1:
            raise ValueError("nz, ngf, ndf, max_width, blocks and expansion must be >= 1")
        for name in ("g_image_blocks", "d_image_blocks"):
            if getattr(self, name) < -1:
                raise ValueError(
                    f"{name} must be >= 0, or -1 for blocks, got {getattr(self, name)}"
                )
        if self.g_opening not in OPENINGS:
            raise ValueError(
                f"g_opening must be one of {', '.join(OPENINGS)}, got {self.g_opening!r}"
            )
        for name in ("g_image_kernel", "d_image_kernel"):  # an even kernel shifts the image
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be odd and >= 1, got {k}")
        if self.group_width < 1:
            raise ValueError(f"group_width must be >= 1, got {self.group_width}")
        for name in ("ngf", "ndf", "max_width"):  # every stage's width is one of these x 2^k
            hidden = getattr(self, name) * self.expansion
            if hidden % self.group_width:
                raise ValueError(
                    f"{name} {getattr(self, name)} x expansion {self.expansion} = {hidden} "
                    f"channels do not split into groups of group_width {self.group_width}"
                )


def plan(cfg: Config, width: int, top: int, img_shape: tuple[int, int, int]) -> tuple:
    """(base, n, channels, blocks, scale) of one network: the basis is base x base, then n
    doublings; channels and residual blocks at each resolution from the basis (index 0) to the
    image (index n): `width` channels and `top` blocks (-1: cfg.blocks) at full size, the width
    doubling towards the basis up to max_width; Fix-up's L^(-1/4) for its L blocks."""
    base, n = layout(img_shape[1], "r3gan")
    channels = [min(width * 2 ** (n - i), cfg.max_width) for i in range(n + 1)]
    blocks = [cfg.blocks] * n + [cfg.blocks if top < 0 else top]
    return base, n, channels, blocks, max(sum(blocks), 1) ** -0.25


class Resample(nn.Module):
    """x2 up or down, channel by channel, with the [1, 2, 1] low-pass filter made fit for a
    factor of 2 as R3GAN does, by one more [1, 1]: [1, 3, 3, 1] (x) [1, 3, 3, 1] / 64, an even
    filter, so the image stays centred (an odd one at stride 2 shifts it half a pixel)."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = (torch.outer(taps, taps) / 64).expand(channels, 1, 4, 4)
        self.up, self.channels = up, channels
        kernel = 4 * kernel if up else kernel  # zero-stuffing keeps 1 pixel in 4: x4 keeps the mean
        self.register_buffer("kernel", kernel.contiguous(), persistent=False)  # fixed: no weight

    def forward(self, x: Tensor) -> Tensor:
        k, c = self.kernel.to(x.dtype), self.channels
        if self.up:  # zero-stuff to 2x, then filter: (B, C, H, W) -> (B, C, 2H, 2W)
            return F.conv_transpose2d(x, k, stride=2, padding=1, groups=c)
        return F.conv2d(x, k, stride=2, padding=1, groups=c)  # filter, keep every second pixel


class Block(nn.Module):
    """x + conv1x1(lrelu(gconv3x3(lrelu(conv1x1(x))))), the last layer starting at zero."""

    def __init__(self, c: int, expansion: int, group_width: int, leak: float, scale: float):
        super().__init__()
        hidden = c * expansion
        groups = hidden // group_width  # Config checks that it divides
        self.widen = nn.Conv2d(c, hidden, 1)
        self.mix = nn.Conv2d(hidden, hidden, 3, padding=1, groups=groups)
        self.narrow = nn.Conv2d(hidden, c, 1)
        self.act = nn.LeakyReLU(leak)
        for conv in (self.widen, self.mix):  # He initialisation, scaled down (Fix-up)
            nn.init.kaiming_normal_(conv.weight, a=leak, nonlinearity="leaky_relu")
            conv.weight.data.mul_(scale)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.narrow.weight)  # the block starts as the identity
        nn.init.zeros_(self.narrow.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.narrow(self.act(self.mix(self.act(self.widen(x)))))


def stage(c: int, blocks: int, cfg: Config, scale: float) -> nn.Sequential:
    return nn.Sequential(
        *(Block(c, cfg.expansion, cfg.group_width, cfg.leak, scale) for _ in range(blocks))
    )


def conv(c_in: int, c_out: int, k: int = 1) -> nn.Conv2d:
    """A k x k convolution with no activation after it (1 x 1 by default), size kept."""
    layer = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
    nn.init.zeros_(layer.bias)
    return layer


class Generator(nn.Module):
    def __init__(
        self,
        cfg: Config,
        img_shape: tuple[int, int, int],
        num_classes: int = 0,  # 0 = unconditional
    ):
        super().__init__()
        base, n, c, blocks, scale = plan(cfg, cfg.ngf, cfg.g_image_blocks, img_shape)
        self.input = LabelledLatent(num_classes, cfg.embed_dim)
        self.shape = (c[0], base, base)
        if cfg.g_opening == "basis":
            self.project = nn.Linear(cfg.nz + self.input.extra, c[0])
            self.basis = nn.Parameter(torch.randn(c[0], base, base))  # scaled per sample by z
        else:  # "linear": z -> (C, base, base)
            self.project = nn.Linear(cfg.nz + self.input.extra, c[0] * base * base)
            self.basis = None
        layers = []
        for i in range(n + 1):
            layers.append(stage(c[i], blocks[i], cfg, scale))
            if i < n:  # narrow at the low resolution, then up: the cheaper order
                layers += [conv(c[i], c[i + 1]), Resample(c[i + 1], up=True)]
        layers.append(conv(c[n], img_shape[0], cfg.g_image_kernel))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.project(self.input(z, labels))  # (B, c0) or (B, c0 * b * b)
        if self.basis is None:
            return self.net(h.view(-1, *self.shape))  # (B, c0, b, b) -> (B, C, H, W)
        return self.net(self.basis * h[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(
        self,
        cfg: Config,
        img_shape: tuple[int, int, int],
        num_classes: int = 0,  # 0 = unconditional
    ):
        super().__init__()
        base, n, c, blocks, scale = plan(cfg, cfg.ndf, cfg.d_image_blocks, img_shape)
        self.planes = num_classes if cfg.cond == "concat" else 0  # one-hot label planes
        layers = [conv(img_shape[0] + self.planes, c[n], cfg.d_image_kernel)]
        if cfg.d_image_act:
            layers.append(nn.LeakyReLU(cfg.leak))
        for i in range(n, -1, -1):
            layers.append(stage(c[i], blocks[i], cfg, scale))
            if i > 0:  # down at the wide channel count's cheaper side: before widening
                layers += [Resample(c[i], up=False), conv(c[i], c[i - 1])]
        self.net = nn.Sequential(*layers)
        self.basis = nn.Conv2d(c[0], c[0], base, groups=c[0])  # depthwise: (b, b) -> (1, 1)
        self.act = nn.LeakyReLU(cfg.leak)
        self.head = Head(c[0], num_classes, cfg.cond)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.planes:
            planes = one_hot(labels, self.planes)[:, :, None, None]  # (B, K, 1, 1)
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)
        h = self.basis(self.net(x)).flatten(1)  # (B, c0)
        return self.head(self.act(h), labels)  # (B,) logits [, (B, K) class logits]


def build(
    cfg: Config, img_shape: tuple[int, int, int], num_classes: int = 0
) -> dict[str, nn.Module]:
    """The players, G and D, for images of shape (C, H, W) and `num_classes` labels."""
    if len(img_shape) != 3 or img_shape[1] != img_shape[2]:
        raise GankitError(f"r3gan needs square images (C, H, H), got shape {tuple(img_shape)}")
    k = label_count(cfg.cond, num_classes)
    return {"G": Generator(cfg, img_shape, k), "D": Discriminator(cfg, img_shape, k)}


noise = gaussian_noise  # z ~ N(0, I), (n, nz)
step = adversarial_step  # the standard alternating D/G game (with --loss rpgan: R3GAN's)


def generate(nets: dict[str, nn.Module], z: Tensor, labels: Tensor | None = None) -> Tensor:
    """Images in [-1, 1]: G has no output Tanh, so its images are clamped here."""
    return nets["G"](z, labels).clamp(-1, 1)
