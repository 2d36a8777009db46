"""GAN losses as pure functions on discriminator outputs, and the penalties.

D outputs a score l per image. For the binary cross-entropy losses it is a logit:
D's probability that x is real is D(x) = sigmoid(l), and every such loss is
written in the numerically stable softplus form:

    -log(sigmoid(l))     = softplus(-l)
    -log(1 - sigmoid(l)) = softplus(l)

The value function of Goodfellow et al. (2014) is
V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]; D maximises it, so its loss is
-V, which is 2 log 2 ~ 1.386 at the equilibrium D = 1/2.

The other losses read l as an unbounded score (least squares, hinge), as a
critic's estimate of the Wasserstein-1 distance (WGAN-GP), or compare the scores
of paired reals and fakes (relativistic pairing, RpGAN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# ---- binary cross-entropy (Goodfellow et al. 2014) ---------------------------------------------


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


# ---- least squares (Mao et al. 2017), targets a = 0 (fake), b = c = 1 (real) --------------------


def d_loss_least_squares(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """1/2 E[(D(x) - b)^2] + 1/2 E[D(G(z))^2]; b = real_target (1, or less when smoothed)."""
    return 0.5 * (real - real_target).square().mean() + 0.5 * fake.square().mean()


def g_loss_least_squares(fake: Tensor) -> Tensor:
    """1/2 E[(D(G(z)) - 1)^2]: G pulls its samples' scores to the real target."""
    return 0.5 * (fake - 1).square().mean()


# ---- hinge (Lim & Ye 2017; Miyato et al. 2018) --------------------------------------------------


def d_loss_hinge(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]: D stops pushing once a margin of 1 is met."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def g_loss_score(fake: Tensor) -> Tensor:
    """-E[D(G(z))]: the G loss of hinge and Wasserstein GANs (raise the critic's score)."""
    return -fake.mean()


# ---- Wasserstein (Arjovsky et al. 2017), with a gradient penalty (Gulrajani et al. 2017) -------


def d_loss_wasserstein(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """E[D(G(z))] - E[D(x)]: minus the critic's estimate of W1(p_data, p_model)."""
    return fake.mean() - real.mean()


# ---- relativistic pairing (Jolicoeur-Martineau 2019), in R3GAN's form (Huang et al. 2024) -----


def d_loss_rpgan(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """E[softplus(-(D(x_i) - D(G(z_i))))] over paired reals and fakes: D scores each real
    above its partner fake. Only differences of scores count, so D cannot settle by
    raising or lowering all of them, which the RpGAN paper links to fewer dropped modes."""
    return F.softplus(-(real - fake)).mean()  # -log sigmoid(D(x) - D(G(z)))


def g_loss_rpgan(fake: Tensor, real: Tensor) -> Tensor:
    """E[softplus(-(D(G(z_i)) - D(x_i)))]: G lifts each fake above its partner real."""
    return F.softplus(-(fake - real)).mean()


class GANLoss(NamedTuple):
    d: Callable[..., Tensor]  # (real_scores, fake_scores, real_target) -> scalar D loss
    g: Callable[..., Tensor]  # (fake_scores) -> scalar G loss; relativistic: (fake, real)
    logits: bool  # D's outputs are logits of a probability (logged as D(x) = sigmoid)
    smoothing: bool  # one-sided label smoothing applies
    gradient_penalty: bool  # adds the WGAN-GP penalty (needs a critic without BatchNorm)
    relativistic: bool = False  # G's loss also reads D's scores of the paired reals


GAN_LOSSES = {
    "non-saturating": GANLoss(d_loss_bce, g_loss_non_saturating, True, True, False),
    "minimax": GANLoss(d_loss_bce, g_loss_minimax, True, True, False),
    "lsgan": GANLoss(d_loss_least_squares, g_loss_least_squares, False, True, False),
    "hinge": GANLoss(d_loss_hinge, g_loss_score, False, False, False),
    "wgan-gp": GANLoss(d_loss_wasserstein, g_loss_score, False, False, True),
    "rpgan": GANLoss(d_loss_rpgan, g_loss_rpgan, False, False, False, relativistic=True),
}


# ---- penalties ----------------------------------------------------------------------------------


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, eps: Tensor | None = None
) -> Tensor:
    """WGAN-GP: E[(|grad_x D(x_hat)|_2 - 1)^2] at x_hat = eps * real + (1 - eps) * fake.

    A 1-Lipschitz critic has gradient norm 1 almost everywhere on these lines, so the
    penalty pushes D towards the Lipschitz constraint of the Wasserstein dual. `eps`
    (B, 1, ...) defaults to U(0, 1) draws from the global torch RNG. The norm is taken
    per critic score, i.e. over a whole pack when the critic packs m samples into one.
    """
    if eps is None:
        eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)  # (B,) or (B / pack,)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    per_score = grad.reshape(len(scores), -1).norm(dim=1)
    return (per_score - 1).square().mean()


def zero_centred_penalties(scores: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    """E[|grad_x D(x)|^2] for each batch x in `inputs` (each must require grad), from one
    backward pass through D: R1 on reals, R2 on fakes, or both at once. `scores` holds
    D's outputs for all of them; each score must depend on its own image only (no
    BatchNorm), so that the gradient of their sum splits into per-image gradients."""
    grads = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    return [g.flatten(1).square().sum(1).mean() for g in grads]


def r1_penalty(real_scores: Tensor, real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): E[|grad_x D(x)|^2] on real data; `real` must require grad."""
    return zero_centred_penalties(real_scores, [real])[0]


def r2_penalty(fake_scores: Tensor, fake: Tensor) -> Tensor:
    """R2 (Mescheder et al. 2018; Huang et al. 2024): E[|grad_x D(x)|^2] on fakes, so D is
    smooth where G's samples are too; `fake` (detached from G) must require grad."""
    return zero_centred_penalties(fake_scores, [fake])[0]


def d_prob(scores: Tensor, logits: bool = True) -> Tensor:
    """Mean of a batch of D outputs for logging: sigmoid(logit) when they are logits, else the raw score."""
    scores = scores.detach()
    return (torch.sigmoid(scores) if logits else scores).mean()
