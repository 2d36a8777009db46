"""The variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"),
the likelihood baseline that the GANs are compared with.

    E (encoder):  x -> (mu, log sigma^2) of q(z|x) = N(mu, diag sigma^2)
    z = mu + sigma * eps, eps ~ N(0, I)            the reparameterisation trick
    G (decoder):  z -> p(x|z)
    loss = -ELBO = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I))      in nats per image

beta > 1 is the beta-VAE (Higgins et al. 2017), trading reconstruction for a more
disentangled code. The decoder's likelihood is
    bernoulli  pixels binarised at mid-grey (x > 0 in [-1, 1]), G gives per-pixel logits;
               log-likelihoods are of the binarised digits
    gaussian   N(mean, sigma^2) on the [-1, 1] pixel values, one learned sigma; a density,
               so its log-likelihoods may be positive
Samples are the decoder's mean image for z ~ N(0, I), so `gankit sample` and
`gankit eval` treat a VAE like a GAN; `gankit eval` adds the held-out ELBO and an
importance-weighted estimate of -log p(x) (Burda et al. 2016).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit.errors import GankitError
from gankit.models.layers import gaussian_noise, layout

ADVERSARIAL = False  # trained by maximising the ELBO, not by the D/G game
ARCHS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")


@dataclass
class Config:
    family: str = "vae"
    nz: int = 16  # size of the latent z; the prior is N(0, I)
    arch: str = "mlp"  # mlp | conv
    widths: tuple[int, ...] = (512, 256)  # mlp: the encoder's hidden widths (decoder: reversed)
    nf: int = 32  # conv: channels of the encoder's first layer, doubling with depth
    beta: float = 1.0  # weight of the KL term; > 1 = beta-VAE
    likelihood: str = "bernoulli"  # bernoulli (binarised pixels) | gaussian (learned std)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {self.likelihood!r}: choose one of {', '.join(LIKELIHOODS)}"
            )
        if self.nz < 1 or self.nf < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError("nz, nf and widths must be >= 1")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


def check(cfg: Config, train_cfg) -> None:
    """Refuse the adversarial game's options: the VAE trains by its own objective."""
    defaults = type(train_cfg)()
    game_only = ("loss", "n_critic", "d_warmup", "label_smoothing", "r1", "r2", "gamma_final")
    game_only += ("reg_every",)
    game_only += ("augment",)
    for name in (*game_only, "instance_noise"):
        if getattr(train_cfg, name) != getattr(defaults, name):
            raise GankitError(
                f"train.{name} belongs to the adversarial game; the VAE trains by its own objective"
            )


def mlp(dims: tuple[int, ...]) -> nn.Sequential:
    layers = []
    for a, b in pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU(True)]
    return nn.Sequential(*layers[:-1])  # no activation after the last layer


class Encoder(nn.Module):
    def __init__(self, cfg: Config, img_shape: tuple[int, int, int]):
        super().__init__()
        if cfg.arch == "mlp":
            self.net = nn.Sequential(nn.Flatten(), mlp((math.prod(img_shape), *cfg.widths)))
            self.net.append(nn.ReLU(True))
            features = cfg.widths[-1]
        else:
            base, n = layout(img_shape[1], "the conv VAE")
            layers, c = [], img_shape[0]
            for i in range(n):  # each halves the size: (B, nf * 2^i, H / 2^(i+1), ...)
                layers += [nn.Conv2d(c, cfg.nf * 2**i, 4, 2, 1), nn.ReLU(True)]
                c = cfg.nf * 2**i
            self.net = nn.Sequential(*layers, nn.Flatten())
            features = c * base * base
        self.out = nn.Linear(features, 2 * cfg.nz)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.out(self.net(x)).chunk(2, dim=1)  # (B, nz) each
        return mu, logvar


class Decoder(nn.Module):
    def __init__(self, cfg: Config, img_shape: tuple[int, int, int]):
        super().__init__()
        self.img_shape = tuple(img_shape)
        self.likelihood, self.beta = cfg.likelihood, cfg.beta  # read by the loss
        if cfg.arch == "mlp":
            self.net = mlp((cfg.nz, *reversed(cfg.widths), math.prod(img_shape)))
        else:
            base, n = layout(img_shape[1], "the conv VAE")
            c = cfg.nf * 2 ** (n - 1)
            layers = [nn.Linear(cfg.nz, c * base * base), nn.ReLU(True)]
            layers.append(nn.Unflatten(1, (c, base, base)))
            for i in range(n):  # each doubles the size; the last gives the image's channels
                out = img_shape[0] if i == n - 1 else c // 2
                layers += [nn.ConvTranspose2d(c, out, 4, 2, 1), nn.ReLU(True)]
                c = out
            self.net = nn.Sequential(*layers[:-1])
        # The Gaussian decoder's one learned log sigma (unused by the Bernoulli decoder).
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Pixel logits (Bernoulli) or means (Gaussian), (B, C, H, W)."""
        return self.net(z).view(z.shape[0], *self.img_shape)


def build(
    cfg: Config, img_shape: tuple[int, int, int], num_classes: int = 0
) -> dict[str, nn.Module]:
    """E (the encoder) and G (the decoder). The VAE ignores labels."""
    if len(img_shape) != 3:
        raise GankitError(f"the VAE models images (C, H, W), got shape {tuple(img_shape)}")
    return {"E": Encoder(cfg, img_shape), "G": Decoder(cfg, img_shape)}


noise = gaussian_noise  # z ~ N(0, I), the prior, (n, nz)


def generate(nets: dict[str, nn.Module], z: Tensor, labels: Tensor | None = None) -> Tensor:
    """The decoder's mean image in [-1, 1] for each z."""
    out = nets["G"](z)
    if _is_bernoulli(nets):
        return torch.sigmoid(out) * 2 - 1  # P(pixel on) -> [-1, 1]
    return out.clamp(-1, 1)


def _is_bernoulli(nets) -> bool:
    return nets["G"].likelihood == "bernoulli"


def log_px_given_z(nets, out: Tensor, x: Tensor) -> Tensor:
    """log p(x|z) per image, (B,), from the decoder's output and images x in [-1, 1]."""
    if _is_bernoulli(nets):
        target = (x > 0).to(out.dtype)  # binarised at mid-grey
        return -F.binary_cross_entropy_with_logits(out, target, reduction="none").flatten(1).sum(1)
    log_sigma = nets["G"].log_sigma
    z2 = ((x - out) * torch.exp(-log_sigma)).square()
    log_density = -0.5 * z2 - log_sigma - 0.5 * math.log(2 * math.pi)  # N(x; mean, sigma^2)
    return log_density.flatten(1).sum(1)


def elbo_terms(nets, x: Tensor, beta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, -log p(x|z), KL), each the batch mean in nats per image, with one z per image."""
    mu, logvar = nets["E"](x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterised: grads reach E
    recon = -log_px_given_z(nets, nets["G"](z), x).mean()
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()  # KL(q || N(0, I))
    return recon + beta * kl, recon, kl


def step(nets, opts, batches, z_fn, game=None, train_g: bool = True) -> dict[str, Tensor]:
    """One Adam step on -ELBO per batch (E and G together). Of the GAN settings only
    `autocast` applies: it wraps the forward pass and the loss, not the backward pass."""
    beta = nets["G"].beta
    autocast = game.autocast if game is not None else contextlib.nullcontext
    for real, _labels in batches:
        with autocast():
            loss, recon, kl = elbo_terms(nets, real, beta)
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts.values():
            opt.step()
    return {"loss/vae": loss.detach(), "loss/recon": recon.detach(), "loss/kl": kl.detach()}


@torch.no_grad()
def log_likelihood(
    nets, x: Tensor, k: int = 1000, generator: torch.Generator | None = None, chunk: int = 50_000
) -> tuple[Tensor, Tensor]:
    """(ELBO, importance-weighted log p(x)) per image, (N,) each, in nats, from k draws of q(z|x).

    With log w_j = log p(x|z_j) + log p(z_j) - log q(z_j|x):
        ELBO  = mean_j log w_j                      (averaged over the same k draws)
        IW_k  = logsumexp_j log w_j - log k         (Burda et al. 2016)
    IW_k >= ELBO for the same draws (Jensen), and IW_k rises towards log p(x) as k grows.
    """
    elbos, iws = [], []
    for xi in x.split(max(1, chunk // k)):
        mu, logvar = nets["E"](xi)  # (B, nz)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn(k, *mu.shape, generator=generator, device=mu.device)  # (k, B, nz)
        z = mu + std * eps
        log_q = (-0.5 * eps.square() - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_prior = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)  # (k, B)
        out = nets["G"](z.flatten(0, 1))  # (k * B, C, H, W)
        log_px = log_px_given_z(nets, out, xi.repeat(k, 1, 1, 1)).view(k, -1)  # (k, B)
        log_w = log_px + log_prior - log_q
        elbos.append(log_w.mean(0))
        iws.append(torch.logsumexp(log_w, 0) - math.log(k))
    return torch.cat(elbos), torch.cat(iws)
