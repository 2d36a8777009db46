"""One round of the two-player game, written once for every adversarial family.

    D step:  minimise loss.d(D(x), D(G(z)))  (+ gradient penalty, R1, R2, ACGAN class loss)
    G step:  minimise loss.g(D(G(z)))        (+ ACGAN class loss on the fakes)
             relativistic losses: loss.g(D(G(z)), D(x)) on the last real batch

With the default non-saturating loss these are: D maximises
log D(x) + log(1 - D(G(z))), G maximises log D(G(z)).

The step knows nothing of architectures: it receives the networks, their
optimisers, real batches (with labels for conditional families), a latent
sampler and the game's settings. Fakes are drawn for the labels of the real
batch, so the fake class frequencies match the data's. Two savings over the
textbook loop, neither of which changes the maths:
- the G step reuses the fake batch of the last D step instead of running G
  again (same z, same G weights, so the same images);
- D's weights are frozen during the G step, so backprop through D computes
  only the gradient with respect to its input, not D's unused weight gradients.

Mixed precision: the forward passes and the losses run inside `game.autocast()`;
backward passes (the penalties' gradients too) and optimiser steps run outside it,
as PyTorch's AMP guide asks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit.augment import diff_augment
from gankit.losses import GAN_LOSSES, d_prob, gradient_penalty, zero_centred_penalties

Batch = tuple[Tensor, Tensor | None]  # (real images (B, C, H, W), labels (B,) or None)
# A conditional family may pass any conditioning in the labels' place (LAPGAN: a tuple).


@dataclass(frozen=True)
class GameSettings:
    loss: str = "non-saturating"  # a key of gankit.losses.GAN_LOSSES
    real_target: float = 1.0  # D's target for reals; < 1 = one-sided label smoothing
    gp_weight: float = 10.0  # lambda of the WGAN-GP penalty (loss wgan-gp only)
    r1: float = 0.0  # gamma of the R1 penalty gamma/2 * E|grad D(x)|^2 on reals; 0 = off
    r2: float = 0.0  # gamma of the R2 penalty gamma/2 * E|grad D(x~)|^2 on fakes; 0 = off
    aux_weight: float = 1.0  # weight of ACGAN's class cross-entropy in both players' losses
    aux_fakes: bool = True  # ACGAN: D also classifies fakes (the paper); False = reals only
    augment: tuple[str, ...] = ()  # DiffAugment policy applied to everything D sees
    instance_noise: float = 0.0  # std of Gaussian noise added to everything D sees (this step)
    content_net: nn.Module | None = None  # SRGAN: frozen features for the content loss
    # A fresh context per use for the forward passes and losses (e.g. bf16 torch.autocast);
    # backward passes and optimiser steps run outside it. nullcontext = float32 throughout.
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def split_outputs(out: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """D's output as (logits (B,), class logits (B, K) or None)."""
    return out if isinstance(out, tuple) else (out, None)


def make_optimizers(
    nets: dict[str, nn.Module], lr: dict[str, float], betas: tuple[float, float]
) -> dict:
    """One Adam per network named in `lr` (e.g. {"G": 2e-4, "D": 2e-4})."""
    opts = {}
    for name, rate in lr.items():
        params = list(nets[name].parameters())
        fused = params[0].device.type in ("cpu", "cuda")  # one kernel per step, not per tensor
        opts[name] = torch.optim.Adam(params, lr=rate, betas=betas, fused=fused)
    return opts


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def generator_names(nets: dict[str, nn.Module]) -> list[str]:
    """The generators among `nets`: G, or G0, G1, ... (LAPGAN's one per pyramid level)."""
    return [k for k in nets if k == "G" or (k[:1] == "G" and k[1:].isdigit())]


def add_ema(nets: dict[str, nn.Module], decay: float) -> dict[str, nn.Module]:
    """Add "G_ema" (or "G0_ema", "G1_ema", ... for LAPGAN's levels): an exponential moving
    average of each generator's weights and buffers (BatchNorm's running statistics too),
    updated after every G step and used for sampling and evaluation (Karras et al. 2018;
    Yazici et al. 2019)."""
    from torch.optim.swa_utils import AveragedModel

    emas = {}
    for name in generator_names(nets):
        ema = AveragedModel(nets[name], multi_avg_fn=ema_with_warmup(decay), use_buffers=True)
        emas[f"{name}_ema"] = ema.requires_grad_(False)
    return nets | emas


def ema_with_warmup(decay: float):
    """The EMA update with decay min(decay, (1 + n) / (10 + n)) at the n-th update, so the
    average forgets G's random start early in training (as TensorFlow's EMA does with
    num_updates); it reaches 0.999 after about 9,000 updates."""

    @torch.no_grad()
    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor) -> None:
        n = float(num_averaged)
        beta = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1 - beta)  # ema += (1 - beta) (p - ema)
        else:  # integer buffers (BatchNorm's batch counter) follow G
            torch._foreach_copy_(ema_params, params)

    return update


def sampling_nets(nets: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The networks to draw samples from: each generator is replaced by its moving average
    when there is one."""
    return nets | {
        name: nets[f"{name}_ema"].module for name in generator_names(nets) if f"{name}_ema" in nets
    }


def twice(cond):
    """A batch's conditioning (labels, or a tuple such as LAPGAN's (coarse image, labels)),
    repeated for one forward pass over reals and fakes together."""
    if cond is None:
        return None
    if isinstance(cond, tuple):
        return tuple(twice(c) for c in cond)
    return torch.cat([cond, cond])


def adversarial_step(
    nets: dict[str, nn.Module],
    opts: dict[str, torch.optim.Optimizer],
    batches: list[Batch],
    z_fn: Callable[[int], Tensor],
    game: GameSettings = GameSettings(),
    train_g: bool = True,
) -> dict[str, Tensor]:
    """len(batches) D steps (n_critic), then (if train_g) one G step. Returns detached scalars."""
    G, D, opt_g, opt_d = nets["G"], nets["D"], opts["G"], opts["D"]
    loss = GAN_LOSSES[game.loss]

    def critic(x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """D's scores of x as the game sees it (augmented, noised); call under game.autocast()."""
        if game.augment:
            x = diff_augment(x, game.augment)
        if game.instance_noise:
            x = x + game.instance_noise * torch.randn_like(x)
        return split_outputs(D(x, labels))  # (B,) scores, (B, K) class logits or None

    def scores_under_autocast(x: Tensor, labels: Tensor | None) -> Tensor:
        """D's scores for a penalty, whose own autograd.grad then runs outside autocast."""
        with game.autocast():
            return critic(x, labels)[0]

    # A D with BatchNorm must see reals and fakes in separate batches (mixing them
    # changes its batch statistics); any other D scores both in one forward pass.
    joint = not has_batchnorm(D)
    out = {}
    for i, (real, labels) in enumerate(batches):
        n, last = real.shape[0], i == len(batches) - 1
        if game.r1:
            real = real.detach().requires_grad_(True)
        with game.autocast():
            with torch.set_grad_enabled(last and train_g):  # only the last fake feeds the G step
                fake = G(z_fn(n), labels)
            fake_in = fake.detach().requires_grad_(bool(game.r2))  # D's view: no path to G
            if joint:
                scores, classes = critic(torch.cat([real, fake_in]), twice(labels))
                real_scores, fake_scores = scores.split(n)
                real_classes, fake_classes = (
                    classes.split(n) if classes is not None else (None, None)
                )
            else:
                real_scores, real_classes = critic(real, labels)
                fake_scores, fake_classes = critic(fake_in, labels)
            d_loss = loss.d(real_scores, fake_scores, game.real_target)
            if real_classes is not None:  # ACGAN: D learns the class of reals (and of fakes)
                class_loss = F.cross_entropy(real_classes, labels)
                if game.aux_fakes:
                    class_loss = class_loss + F.cross_entropy(fake_classes, labels)
        if loss.gradient_penalty:  # the penalties differentiate D: outside autocast
            gp = gradient_penalty(lambda x, y=labels: scores_under_autocast(x, y), real, fake)
            d_loss = d_loss + game.gp_weight * gp
        penalised = [(x, g) for x, g in ((real, game.r1), (fake_in, game.r2)) if g]
        if penalised:  # R1 and R2 from one backward pass (each score sees one image)
            both = torch.cat([real_scores, fake_scores]) if game.r1 and game.r2 else None
            scores_of = both if both is not None else (real_scores if game.r1 else fake_scores)
            norms = zero_centred_penalties(scores_of, [x for x, _ in penalised])
            for norm, (_, gamma) in zip(norms, penalised, strict=True):
                d_loss = d_loss + 0.5 * gamma * norm
            r1 = norms[0] if game.r1 else None
            r2 = norms[-1] if game.r2 else None
        if real_classes is not None:
            d_loss = d_loss + game.aux_weight * class_loss
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    out["loss/D"] = d_loss.detach()
    out["D(x)"] = d_prob(real_scores, loss.logits)
    out["D(G(z))"] = d_prob(fake_scores, loss.logits)
    if loss.gradient_penalty:
        out["loss/gp"] = gp.detach()
    if game.r1:
        out["loss/r1"] = r1.detach()
    if game.r2:
        out["loss/r2"] = r2.detach()
    if real_classes is not None:
        out["loss/class"] = class_loss.detach()
        out["acc/class_real"] = (real_classes.detach().argmax(1) == labels).float().mean()
    if train_g:
        D.requires_grad_(False)  # G step: gradients flow through D to G, not into D's weights
        with game.autocast():
            if not loss.relativistic:
                fake_scores, fake_classes = critic(fake, labels)
                g_loss = loss.g(fake_scores)
            elif joint:  # the paired reals' scores under D as it is now
                scores, classes = critic(torch.cat([real.detach(), fake]), twice(labels))
                real_scores, fake_scores = scores.split(n)
                fake_classes = classes.split(n)[1] if classes is not None else None
                g_loss = loss.g(fake_scores, real_scores.detach())
            else:
                real_scores = critic(real.detach(), labels)[0]
                fake_scores, fake_classes = critic(fake, labels)
                g_loss = loss.g(fake_scores, real_scores.detach())
            if fake_classes is not None:  # ACGAN: G makes fakes D classifies as their label
                g_loss = g_loss + game.aux_weight * F.cross_entropy(fake_classes, labels)
        D.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        if "G_ema" in nets:
            nets["G_ema"].update_parameters(G)
        out["loss/G"] = g_loss.detach()
    return out
