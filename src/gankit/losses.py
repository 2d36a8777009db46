"""GAN losses as pure functions on discriminator logits.

D outputs a logit l; its probability that x is real is D(x) = sigmoid(l). Every
loss is written in the numerically stable softplus form:

    -log(sigmoid(l))     = softplus(-l)
    -log(1 - sigmoid(l)) = softplus(l)

The value function of Goodfellow et al. (2014) is
V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]; D maximises it, so its loss is
-V, which is 2 log 2 ~ 1.386 at the equilibrium D = 1/2.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def d_loss_bce(real_logits: Tensor, fake_logits: Tensor, real_target: float = 1.0) -> Tensor:
    """-V(D, G): binary cross-entropy with reals labelled `real_target` and fakes 0.

    real_target < 1 is one-sided label smoothing (Salimans et al. 2016): only the
    real label is softened, so D is never rewarded for calling fakes a bit real.
    """
    t = real_target
    loss_real = t * F.softplus(-real_logits) + (1 - t) * F.softplus(real_logits)  # BCE(l, t)
    loss_fake = F.softplus(fake_logits)  # -log(1 - D(G(z)))
    return loss_real.mean() + loss_fake.mean()


def g_loss_non_saturating(fake_logits: Tensor) -> Tensor:
    """Minimise -log D(G(z)): strong gradients while D still rejects the fakes."""
    return F.softplus(-fake_logits).mean()  # -log(sigmoid(l))


def g_loss_minimax(fake_logits: Tensor) -> Tensor:
    """Minimise log(1 - D(G(z))), the original paper's G objective (saturates early on)."""
    return -F.softplus(fake_logits).mean()  # log(1 - sigmoid(l))


class GANLoss(NamedTuple):
    d: callable  # (real_logits, fake_logits, real_target) -> scalar D loss
    g: callable  # (fake_logits) -> scalar G loss


GAN_LOSSES = {
    "non-saturating": GANLoss(d=d_loss_bce, g=g_loss_non_saturating),
    "minimax": GANLoss(d=d_loss_bce, g=g_loss_minimax),
}


def d_prob(logits: Tensor) -> Tensor:
    """Mean D probability of a batch of logits, for logging D(x) and D(G(z))."""
    return torch.sigmoid(logits.detach()).mean()
