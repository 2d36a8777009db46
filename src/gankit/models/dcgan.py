"""DCGAN (Radford, Metz & Chintala 2015, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks").

The paper's architecture rules: strided (transposed) convolutions instead of pooling,
BatchNorm in both players except G's output layer and D's input layer, ReLU in G
and LeakyReLU(0.2) in D, Tanh on G's output, weights drawn from N(0, 0.02).

The image size decides the depth: it must be base * 2^n with a base of 3 to 7 and
n >= 1, e.g. 28 = 7 * 2^2 (MNIST), 32 = 4 * 2^3 (CIFAR-10), 64 = 4 * 2^4 (folders).
With n = 2 (28 x 28) and ngf = ndf = 64:

    G: z (B, nz, 1, 1)
       -> ConvT(k=7)           -> BN -> ReLU     # state size (B, 128, 7, 7)
       -> ConvT(k=4, stride=2) -> BN -> ReLU     # (B, 64, 14, 14)
       -> ConvT(k=4, stride=2) -> Tanh           # (B, C, 28, 28)
    D: x (B, C, 28, 28)
       -> Conv(k=4, stride=2)        -> LeakyReLU    # (B, 64, 14, 14)
       -> Conv(k=4, stride=2) -> BN  -> LeakyReLU    # (B, 128, 7, 7)
       -> flatten -> Linear          -> logit (B,)

`d_norm` swaps D's BatchNorm for LayerNorm, InstanceNorm or nothing (a WGAN-GP
critic must not batch-normalise); `spectral_norm` adds spectral normalisation;
`mbstd` adds ProGAN's minibatch standard deviation as one more plane before D's head.
Conditional (`cond`, see gankit.models.layers): G reads [z, embed(y)]; with
`concat` D reads the image plus K one-hot label planes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gankit.errors import GankitError
from gankit.game import adversarial_step
from gankit.models.layers import (
    D_NORMS,
    Head,
    LabelledLatent,
    MinibatchStd,
    check_conditioning,
    d_norm_layer,
    gaussian_noise,
    generate_with_g,
    label_count,
    layout,
    one_hot,
    spectral_norm_all,
)


@dataclass
class Config:
    family: str = "dcgan"
    nz: int = 100  # size of the latent z ~ N(0, I)
    ngf: int = 64  # G's width: channels of its last hidden layer, doubling towards z
    ndf: int = 64  # D's width: channels of its first layer, doubling with depth
    d_norm: str = "batch"  # D's normalisation: batch | layer | instance | none
    leak: float = 0.2  # negative slope of D's LeakyReLU
    cond: str = "none"  # labels: none | concat | projection | acgan (see gankit.models.layers)
    embed_dim: int = 10  # size of G's label embedding (conditional only)
    spectral_norm: bool = False  # spectral normalisation of D's layers (Miyato et al. 2018)
    mbstd: int = 0  # minibatch std (ProGAN) before D's head, over groups of this many; 0 = off

    def __post_init__(self):
        check_conditioning(self.cond, self.embed_dim)
        if min(self.nz, self.ngf, self.ndf) < 1:
            raise ValueError("nz, ngf and ndf must be >= 1")
        if self.mbstd < 0 or self.mbstd == 1:
            raise ValueError(f"mbstd must be 0 (off) or a group of >= 2 samples, got {self.mbstd}")
        if self.d_norm not in D_NORMS:
            raise ValueError(f"unknown d_norm {self.d_norm!r}: choose one of {', '.join(D_NORMS)}")


class Generator(nn.Module):
    def __init__(
        self,
        nz: int,
        ngf: int,
        img_shape: tuple[int, int, int],
        num_classes: int = 0,  # 0 = unconditional
        embed_dim: int = 10,
    ):
        super().__init__()
        base, n = layout(img_shape[1], "DCGAN")
        self.input = LabelledLatent(num_classes, embed_dim)
        c = ngf * 2 ** (n - 1)
        layers = [  # project z to (B, c, base, base)
            nn.ConvTranspose2d(nz + self.input.extra, c, base, 1, 0, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(True),
        ]
        for _ in range(n - 1):  # each doubles the size and halves the channels
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2)]
            layers.append(nn.ReLU(True))
            c //= 2
        layers += [nn.ConvTranspose2d(c, img_shape[0], 4, 2, 1), nn.Tanh()]  # no BN on the output
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.input(z, labels)  # (B, nz [+ embed_dim])
        return self.net(h[:, :, None, None])  # (B, C, H, W) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(
        self,
        ndf: int,
        img_shape: tuple[int, int, int],
        d_norm: str = "batch",
        leak: float = 0.2,
        num_classes: int = 0,  # 0 = unconditional
        cond: str = "none",
        mbstd: int = 0,  # minibatch std group size; 0 = off
    ):
        super().__init__()
        base, n = layout(img_shape[1], "DCGAN")
        self.num_classes = num_classes if cond == "concat" else 0  # one-hot label planes
        bias = d_norm == "none"  # a norm layer has its own shift
        layers = [  # no norm on D's input layer
            nn.Conv2d(img_shape[0] + self.num_classes, ndf, 4, 2, 1),
            nn.LeakyReLU(leak, True),
        ]
        c = ndf
        for _ in range(n - 1):  # each halves the size and doubles the channels
            layers += [nn.Conv2d(c, c * 2, 4, 2, 1, bias=bias), d_norm_layer(d_norm, c * 2)]
            layers.append(nn.LeakyReLU(leak, True))
            c *= 2
        if mbstd:  # one more plane: the spread of each group of samples
            layers.append(MinibatchStd(mbstd))
            c += 1
        self.net = nn.Sequential(*layers)  # -> (B, c, base, base)
        self.head = Head(c * base * base, num_classes, cond)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.num_classes:
            planes = one_hot(labels, self.num_classes)[:, :, None, None]  # (B, K, 1, 1)
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)
        h = self.net(x).flatten(1)  # (B, c * base * base)
        return self.head(h, labels)  # (B,) logits [, (B, K) class logits]


def init_weights(net: nn.Module) -> nn.Module:
    """DCGAN's initialisation: weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return net


def check(cfg: Config, train_cfg) -> None:
    """Minibatch std groups must not straddle the reals and fakes D scores together."""
    if cfg.mbstd and train_cfg.batch_size % cfg.mbstd:
        raise GankitError(
            f"model.mbstd {cfg.mbstd} must divide train.batch_size {train_cfg.batch_size}"
        )


def batchnorm_d(cfg: Config) -> str | None:
    """How to rid D of BatchNorm, which the gradient penalties cannot work through; None
    when it has none."""
    return "set --model.d-norm layer, instance or none" if cfg.d_norm == "batch" else None


def build(
    cfg: Config, img_shape: tuple[int, int, int], num_classes: int = 0
) -> dict[str, nn.Module]:
    """The players, G and D, for images of shape (C, H, W) and `num_classes` labels."""
    if len(img_shape) != 3 or img_shape[1] != img_shape[2]:
        raise GankitError(f"DCGAN needs square images (C, H, H), got shape {tuple(img_shape)}")
    k = label_count(cfg.cond, num_classes)
    G = init_weights(Generator(cfg.nz, cfg.ngf, img_shape, k, cfg.embed_dim))
    D = Discriminator(cfg.ndf, img_shape, cfg.d_norm, cfg.leak, k, cfg.cond, cfg.mbstd)
    D = init_weights(D)
    return {"G": G, "D": spectral_norm_all(D) if cfg.spectral_norm else D}


noise = gaussian_noise  # z ~ N(0, I), (n, nz)
generate = generate_with_g  # G(z, labels)
step = adversarial_step  # the standard alternating D/G game
