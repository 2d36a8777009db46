"""Mode-collapse remedies as one training step of the two-player game.

A remedy is a set of choices on top of the plain GAN (Goodfellow et al., 2014):

    loss    "gan": D minimises -V(D, G) (softplus BCE), G the non-saturating -log D(G(z));
            "wgan-gp": a critic with the gradient penalty (Gulrajani et al., 2017).
    pack    D judges `pack` samples concatenated (PacGAN, Lin et al., 2018).
    unroll  G's loss is taken against D after `unroll` further D updates, differentiated
            through those updates (Unrolled GAN, Metz et al., 2017).
    drs     after training, G's samples are filtered by a D fitted to D*: discriminator
            rejection sampling (Azadi et al., 2019). The sampler is then G and D together.
    r1      D's loss adds r1/2 E|grad_x D(x)|^2 on real data: the zero-centred gradient
            penalty of Mescheder et al. (2018), under which the game converges locally
            to p_model = p_data; with z of the data's dimension (nz 2), a long LR decay and
            G's weights averaged for sampling (`ema`), it is the best remedy here.

`REMEDIES` maps each name to its tuned settings (fields of `lab2d.Lab2DConfig`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gankit.losses import (
    GAN_LOSSES,
    d_loss_wasserstein,
    g_loss_score,
    gradient_penalty,
    r1_penalty,
)

# Settings on top of Lab2DConfig's defaults; a user's explicit options override them.
# WGAN-GP and unrolled steps cost ~5x and ~8x a plain step, hence fewer of them.
REMEDIES: dict[str, dict] = {
    "plain": {},
    "wgan-gp": {
        "loss": "wgan-gp",
        "n_critic": 5,
        "lr_g": 5e-4,
        "lr_d": 5e-4,
        "beta2": 0.9,
        "steps": 1000,
    },
    "pacgan": {"pack": 4},
    "unrolled": {"unroll": 5, "steps": 1000},
    # PacGAN4 with 3 D updates per G update, then discriminator rejection sampling
    # (Azadi et al., 2019) with a fresh D fitted to D* against the final G.
    "pacgan-drs": {"pack": 4, "n_critic": 3, "d_width": 256, "steps": 4000, "drs": 2000},
    # The plain GAN with R1 (gamma 0.1), a 2D latent, 20,000 steps (the last 10,000 with the
    # LR falling to 0) and an EMA of G for sampling. Measured on grid seed 0, 12,000 steps:
    # nz 16 gave 92.6% high quality, nz 2 95.6%; without R1 (and nz 16) 5-45%. At 16,000
    # steps one grid seed of five had 94.9%; at 20,000 the worst had 97.0% (240 s a run).
    "r1": {"r1": 0.1, "nz": 2, "steps": 20000, "ema": 0.999},
}
BEST = "r1"  # the remedy `gankit lab 2d` uses when none is named ("best")


# ---- unrolled D ---------------------------------------------------------------------------


def unrolled_params(
    D: nn.Module,
    opt_d: torch.optim.Optimizer,
    d_loss: Callable[[dict, Tensor, Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    k: int,
    lr: float,
) -> dict[str, Tensor]:
    """D's parameters after k differentiable updates on (real, fake).

    `fake` carries G's graph and every update is built with create_graph=True, so a loss
    on the returned parameters back-propagates into G through all k updates. Each update
    is an Adam-like step: the gradient divided by the square root of Adam's second-moment
    estimate (opt_d's, updated with this gradient, held constant), so it moves D about as
    far as a real step would.
    """
    params = dict(D.named_parameters())
    (group,) = opt_d.param_groups
    beta2 = group["betas"][1]
    for _ in range(k):
        loss = d_loss(params, real, fake)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        new = {}
        for (name, p), g in zip(params.items(), grads, strict=True):
            # Adam's second moment, this gradient included, held constant: the step is then
            # at most lr * sqrt((1 - beta2^t) / (1 - beta2)) per coordinate, like Adam's.
            state = opt_d.state.get(D.get_parameter(name), {})
            t = float(state.get("step", 0)) + 1
            v = state.get("exp_avg_sq", torch.zeros_like(p)) * beta2 + (1 - beta2) * g.detach() ** 2
            precond = 1 / ((v / (1 - beta2**t)).sqrt() + 1e-8)
            new[name] = p - lr * precond * g
        params = new
    return params


# ---- one step of the game -----------------------------------------------------------------


def game_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real_fn: Callable[[int], Tensor],
    z_fn: Callable[[int], Tensor],
    batch_size: int,
    loss: str = "gan",
    n_critic: int = 1,
    gp_weight: float = 10.0,
    unroll: int = 0,
    generator: torch.Generator | None = None,
    r1: float = 0.0,
) -> dict[str, float]:
    """n_critic D updates, then one G update. Returns the scalars to log.

    batch_size counts samples; D sees batch_size / D.pack inputs of each kind.
    """
    bce = GAN_LOSSES["non-saturating"]

    def d_loss_at(params: dict | None, real: Tensor, fake: Tensor) -> Tensor:
        f = D if params is None else (lambda x: functional_call(D, params, (x,)))
        if loss == "wgan-gp":
            eps = torch.rand(len(real), 1, generator=generator)
            return d_loss_wasserstein(f(real), f(fake)) + gp_weight * gradient_penalty(
                f, real, fake, eps
            )
        if r1 == 0:
            return bce.d(f(real), f(fake))
        real = real.detach().requires_grad_(True)
        real_scores = f(real)
        return bce.d(real_scores, f(fake)) + r1 / 2 * r1_penalty(real_scores, real)

    # ---- D: minimise d_loss with G fixed
    for _ in range(n_critic):
        real = real_fn(batch_size)  # (B, dim)
        with torch.no_grad():
            fake = G(z_fn(batch_size))  # (B, dim)
        opt_d.zero_grad(set_to_none=True)
        l_d = d_loss_at(None, real, fake)
        l_d.backward()
        opt_d.step()

    # ---- G: minimise its loss against D (or against D after `unroll` more updates)
    fake = G(z_fn(batch_size))
    D.requires_grad_(unroll > 0)  # unrolling needs D's parameter gradients; otherwise skip them
    if unroll > 0:
        lr = opt_d.param_groups[0]["lr"]
        params = unrolled_params(D, opt_d, d_loss_at, real_fn(batch_size), fake, unroll, lr)
        scores = functional_call(D, params, (fake,))
    else:
        scores = D(fake)
    l_g = g_loss_score(scores) if loss == "wgan-gp" else bce.g(scores)
    opt_g.zero_grad(set_to_none=True)
    l_g.backward()
    opt_g.step()
    D.requires_grad_(True)
    D.zero_grad(set_to_none=True)
    return {"loss/D": l_d.item(), "loss/G": l_g.item()}


# ---- discriminator rejection sampling -----------------------------------------------------


def fit_optimal_d(
    G: nn.Module,
    D: nn.Module,
    real_fn: Callable[[int], Tensor],
    z_fn: Callable[[int], Tensor],
    steps: int,
    batch_size: int,
    lr: float,
) -> None:
    """Train a per-sample D alone against the frozen G, towards D* = p_data / (p_data + p_model).

    Its logit then estimates log(p_data / p_model), which `rejection_sample` needs.
    """
    opt = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    bce = GAN_LOSSES["non-saturating"]
    for _ in range(steps):
        with torch.no_grad():
            fake = G(z_fn(batch_size))
        loss = bce.d(D(real_fn(batch_size)), D(fake))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def rejection_sample(
    G: nn.Module,
    D: nn.Module,
    z: Tensor,
    n: int,
    u: Tensor,
    beta: float = 1.0,
) -> tuple[Tensor, float]:
    """Discriminator rejection sampling (Azadi et al., 2019), in its exact form.

    With D ~ D*, exp(logit) = D / (1 - D) ~ p_data / p_model, so accepting a candidate
    G(z) with probability exp(logit - max logit) turns samples of p_model into samples of
    p_data (up to D's error). z: (M, nz) candidate latents; u: (M,) uniforms in [0, 1).
    Returns the first n accepted samples (n, dim) and the acceptance rate. Raises if
    fewer than n candidates are accepted.

    beta > 1 accepts with probability (D / (1 - D))^beta instead, normalised the same
    way: no longer exact, it trades D's errors (a ratio too high between the modes)
    for samples concentrated where D is surest.
    """
    fake = torch.cat([G(c) for c in z.split(65_536)])  # (M, dim), in chunks to bound memory
    logits = beta * torch.cat([D(c) for c in fake.split(65_536)])  # (M,)
    # The normaliser is the max logit, bar the top 0.01%: one outlier would otherwise set
    # the acceptance rate of all the rest (those few are then accepted with probability 1).
    top = logits.kthvalue(max(1, int(0.9999 * len(logits)))).values
    accept = u < torch.exp(logits - top)  # (M,)
    kept = fake[accept]
    if len(kept) < n:
        raise RuntimeError(f"rejection sampling kept {len(kept)} of {len(z)} candidates, need {n}")
    return kept[:n], accept.float().mean().item()
