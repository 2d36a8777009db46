"""One round of the two-player game, written once for every adversarial family.

    D step:  maximise log D(x) + log(1 - D(G(z)))     (minimise loss.d)
    G step:  maximise log D(G(z))  (non-saturating)   (minimise loss.g)

The step knows nothing of architectures: it receives the networks, their
optimisers, real batches and a latent sampler. Two savings over the textbook
loop, neither of which changes the maths:
- the G step reuses the fake batch of the last D step instead of running G
  again (same z, same G weights, so the same images);
- D's weights are frozen during the G step, so backprop through D computes
  only the gradient with respect to its input, not D's unused weight gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from gankit.losses import GAN_LOSSES, d_prob


def make_optimizers(
    nets: dict[str, nn.Module], lr: dict[str, float], betas: tuple[float, float]
) -> dict:
    """One Adam per network; `lr` maps a network's name ("G", "D") to its learning rate."""
    opts = {}
    for name, net in nets.items():
        params = list(net.parameters())
        fused = params[0].device.type in (
            "cpu",
            "cuda",
        )  # one kernel per step instead of per tensor
        opts[name] = torch.optim.Adam(params, lr=lr[name], betas=betas, fused=fused)
    return opts


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def adversarial_step(
    nets: dict[str, nn.Module],
    opts: dict[str, torch.optim.Optimizer],
    reals: list[Tensor],
    z_fn: Callable[[int], Tensor],
    loss: str = "non-saturating",
    real_target: float = 1.0,
    train_g: bool = True,
) -> dict[str, Tensor]:
    """len(reals) D steps, then (if train_g) one G step. Returns detached scalars to log.

    reals: one real batch (B, C, H, W) per D step.
    z_fn:  n -> latents for n fakes.
    """
    G, D, opt_g, opt_d = nets["G"], nets["D"], opts["G"], opts["D"]
    losses = GAN_LOSSES[loss]
    # A D with BatchNorm must see reals and fakes in separate batches (mixing them
    # changes its batch statistics); any other D scores both in one forward pass.
    joint = not has_batchnorm(D)
    out = {}
    for i, real in enumerate(reals):
        last = i == len(reals) - 1
        with torch.set_grad_enabled(last and train_g):  # only the last fake feeds the G step
            fake = G(z_fn(real.shape[0]))
        if joint:
            real_logits, fake_logits = D(torch.cat([real, fake.detach()])).split(real.shape[0])
        else:
            real_logits, fake_logits = D(real), D(fake.detach())
        d_loss = losses.d(real_logits, fake_logits, real_target)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
    out["loss/D"] = d_loss.detach()
    out["D(x)"] = d_prob(real_logits)
    out["D(G(z))"] = d_prob(fake_logits)
    if train_g:
        D.requires_grad_(False)  # G step: gradients flow through D to G, not into D's weights
        g_loss = losses.g(D(fake))
        D.requires_grad_(True)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        out["loss/G"] = g_loss.detach()
    return out
