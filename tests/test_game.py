"""Every family with every loss, conditioning and regulariser: a step moves both players,
save/load reproduces samples exactly, and the penalties mean what they say."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import quiet
from gankit import checkpoint as ckpt
from gankit.augment import diff_augment, parse_policy
from gankit.config import load_config
from gankit.game import (
    GameSettings,
    add_ema,
    adversarial_step,
    generator_names,
    make_optimizers,
    sampling_nets,
)
from gankit.losses import (
    GAN_LOSSES,
    gradient_penalty,
    r1_penalty,
    r2_penalty,
    zero_centred_penalties,
)
from gankit.models import MODELS, is_adversarial, is_conditional, srgan
from gankit.sample import Sampler
from gankit.train import train

SHAPE = (1, 28, 28)
TINY_MODEL = {
    "mlp": {"g_widths": "16,32", "d_widths": "32,16"},
    "dcgan": {"ngf": 8, "ndf": 8},
    "lapgan": {"coarse_widths": "16,32", "ngf": 8, "ndf": 8, "nz": 8},
    "vae": {"widths": "32,16"},
    "r3gan": {"ngf": 8, "ndf": 8, "nz": 8},
}
# The image GANs that draw from noise (SRGAN upscales images: tests/test_srgan.py).
GANS = [f for f in MODELS if is_adversarial(MODELS[f]) and not hasattr(MODELS[f], "upscale")]
CONDS = {"mlp": ("concat", "projection", "acgan"), "dcgan": ("concat", "projection", "acgan")}
CONDS["lapgan"] = ("concat",)
CONDS["r3gan"] = ("concat", "projection", "acgan")


def model_cfg(family: str, **overrides):
    over = {"family": family} | {f"model.{k}": v for k, v in TINY_MODEL[family].items()}
    return load_config(None, over | {k: str(v) for k, v in overrides.items()})


def build(cfg, seed=0):
    torch.manual_seed(seed)
    nets = MODELS[cfg.model.family].build(cfg.model, SHAPE, num_classes=10)
    if cfg.train.ema:
        nets = add_ema(nets, cfg.train.ema)
    return nets


def one_step(cfg, nets, game: GameSettings, opts=None):
    family = MODELS[cfg.model.family]
    opts = opts or make_optimizers(nets, {k: 1e-3 for k in players(nets)}, (0.5, 0.999))
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(16, *SHAPE, generator=gen) * 2 - 1
    labels = torch.randint(0, 10, (16,), generator=gen) if is_conditional(cfg.model) else None
    batches = [(real, labels)] * cfg.train.n_critic
    return family.step(nets, opts, batches, lambda n: family.noise(cfg.model, n, gen), game)


def players(nets: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The trained networks (G, D; G0, D0, ...; E, G), not G's moving average."""
    return {k: v for k, v in nets.items() if not k.endswith("_ema")}


def snapshot(nets) -> dict[str, list[torch.Tensor]]:
    return {k: params(v) for k, v in players(nets).items()}


def all_moved(before: dict, nets) -> bool:
    return all(moved(before[k], net) for k, net in players(nets).items())


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def moved(before: list[torch.Tensor], net: nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def critic_norm(loss: str) -> dict:
    return {"model.d_norm": "layer"} if GAN_LOSSES[loss].gradient_penalty else {}


CASES = [(f, loss, "none") for f in GANS for loss in GAN_LOSSES] + [
    (f, "non-saturating", cond) for f in GANS for cond in CONDS[f]
]


@pytest.mark.parametrize("family, loss, cond", CASES)
def test_one_step_moves_both_players_with_finite_scalars(family, loss, cond):
    extra = critic_norm(loss) if family == "dcgan" else {}
    cfg = model_cfg(family, loss=loss, cond=cond, **extra)
    nets = build(cfg)
    before = snapshot(nets)
    out = one_step(cfg, nets, GameSettings(loss=loss))
    assert all_moved(before, nets)
    assert {"loss/D", "loss/G", "D(x)", "D(G(z))"} <= set(out)
    assert all(math.isfinite(float(v)) for v in out.values())
    if loss == "wgan-gp":
        assert float(out["loss/gp"]) >= 0
    if cond == "acgan":
        assert 0 <= float(out["acc/class_real"]) <= 1 and float(out["loss/class"]) > 0


REGULARISERS = [
    {"train.r1": 10.0, "model.d_norm": "layer"},
    {"train.r1": 1.0, "train.r2": 1.0, "loss": "rpgan", "model.d_norm": "none"},
    {"model.spectral_norm": True, "loss": "hinge", "model.d_norm": "none"},
    {"train.augment": "color,translation,cutout"},
    {"train.augment": "translation", "loss": "wgan-gp", "model.d_norm": "layer"},
    {"train.instance_noise": 0.1},
    {"train.label_smoothing": 0.1},
    {"train.ema": 0.9},
    {"train.n_critic": 2},
]


NOT_FOR = {  # refused by LAPGAN's check; R3GAN's D has no spectral norm by design
    "lapgan": {"model.spectral_norm", "train.augment"},
    "r3gan": {"model.spectral_norm"},
}
REG_CASES = [(f, reg) for f in GANS for reg in REGULARISERS if not NOT_FOR.get(f, set()) & set(reg)]


@pytest.mark.parametrize(
    "family, reg", REG_CASES, ids=lambda x: x if isinstance(x, str) else ",".join(x)
)
def test_regularisers_train_every_family(family, reg):
    if family != "dcgan":  # the MLP's and LAPGAN's Ds have no norm layer to choose
        reg = {k: v for k, v in reg.items() if k != "model.d_norm"}
    cfg = model_cfg(family, **reg)
    t = cfg.train
    game = GameSettings(
        loss=t.loss,
        real_target=1 - t.label_smoothing,
        r1=t.r1,
        r2=t.r2,
        augment=parse_policy(t.augment),
        instance_noise=t.instance_noise,
    )
    nets = build(cfg)
    before = snapshot(nets)
    out = one_step(cfg, nets, game)
    assert all_moved(before, nets)
    assert all(math.isfinite(float(v)) for v in out.values())
    if t.r1:
        assert float(out["loss/r1"]) > 0
    if t.r2:
        assert float(out["loss/r2"]) > 0
    if t.ema:  # each G's average starts at its first update, then lags behind it
        gs = generator_names(nets)
        assert gs and all(f"{g}_ema" in nets for g in gs)
        first = {g: params(nets[g]) for g in gs}
        assert not any(moved(first[g], nets[f"{g}_ema"].module) for g in gs)
        one_step(cfg, nets, game)
        for g in gs:
            ema = nets[f"{g}_ema"].module
            assert moved(first[g], ema) and moved(params(nets[g]), ema)


EXTRAS = {
    "mlp": {"cond": "projection", "ema": 0.9, "spectral_norm": True},
    "dcgan": {"cond": "acgan", "ema": 0.9, "spectral_norm": True, "d_norm": "none"},
    "lapgan": {"cond": "concat", "ema": 0.9},
    "vae": {"arch": "conv", "likelihood": "gaussian", "ema": 0.9},
    "r3gan": {"cond": "projection", "ema": 0.9},
}


@pytest.mark.parametrize("family", list(EXTRAS))
@pytest.mark.parametrize("conditional", [False, True])
def test_save_load_reproduces_samples_exactly(family, conditional, tmp_path):
    cfg = model_cfg(family, **(EXTRAS[family] if conditional else {}))
    nets = build(cfg, seed=3)
    one_step(cfg, nets, GameSettings())  # BatchNorm statistics and SN vectors are not at init
    path = tmp_path / "c.safetensors"
    ckpt.save_checkpoint(path, nets, None, {"config": cfg.to_dict()})
    fresh = build(cfg, seed=99)
    ckpt.load_checkpoint(path, fresh)
    z = MODELS[family].noise(cfg.model, 8, torch.Generator().manual_seed(5))
    y = torch.arange(8) % 10
    y = y if is_conditional(cfg.model) else None
    draws = []
    for n in (nets, fresh):
        for net in n.values():
            net.eval()
        draws.append(MODELS[family].generate(sampling_nets(n), z, y))
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("family", list(EXTRAS))
def test_same_seed_same_samples_through_training(family, tmp_path):
    def run(name, seed):
        cfg = model_cfg(family, steps=6, seed=seed, device="cpu", batch_size=16, sample_every=6)
        train(cfg, tmp_path / name, progress=False, log=quiet)
        return Sampler.load(tmp_path / name, device="cpu").images(16, seed=0)

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gradient_penalty_is_zero_for_a_1_lipschitz_linear_critic():
    x_real, x_fake = torch.randn(64, 10), torch.randn(64, 10)
    w = torch.randn(10)
    unit = lambda x: x @ (w / w.norm())  # |grad| = 1 everywhere  # noqa: E731
    steep = lambda x: x @ (3 * w / w.norm())  # |grad| = 3  # noqa: E731
    assert gradient_penalty(unit, x_real, x_fake).item() == pytest.approx(0, abs=1e-10)
    assert gradient_penalty(steep, x_real, x_fake).item() == pytest.approx(4.0)  # (3 - 1)^2
    mlp = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    assert gradient_penalty(lambda x: mlp(x).squeeze(1), x_real, x_fake).item() > 0


def test_gradient_penalty_trains_the_critic_towards_1_lipschitz():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 1))
    for p in critic.parameters():
        p.data.mul_(5)  # start steep
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    f = lambda x: critic(x).squeeze(1)  # noqa: E731
    real, fake = torch.randn(256, 2) + 2, torch.randn(256, 2)
    first = gradient_penalty(f, real, fake).item()
    for _ in range(200):
        opt.zero_grad()
        gradient_penalty(f, real, fake).backward()
        opt.step()
    assert gradient_penalty(f, real, fake).item() < 0.01 * first


def test_r1_penalty_is_the_squared_gradient_norm():
    x = torch.randn(8, 3, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 2.0])  # |w|^2 = 9
    assert r1_penalty(x @ w, x).item() == pytest.approx(9.0)


def test_r2_penalty_is_the_squared_gradient_norm_at_the_fakes():
    fake = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]], requires_grad=True)
    scores = (fake**2).sum(1)  # grad 2x: |2x|^2 = 4, 16, 40 -> mean 20
    assert r2_penalty(scores, fake).item() == pytest.approx(20.0)
    real = torch.randn(3, 2, requires_grad=True)
    both = zero_centred_penalties(torch.cat([(real * 3).sum(1), (fake**2).sum(1)]), [real, fake])
    assert [v.item() for v in both] == pytest.approx([18.0, 20.0])  # one backward, each its own


def rpgan_by_hand(G, D, reals, zs, gamma, lr):
    """R3GAN's game written out with plain SGD: per real batch, D on
    softplus(-(D(x) - D(G(z)))) + gamma/2 (R1 + R2); then G on softplus(-(D(G(z)) - D(x)))
    for the last batch, with D as it is after its steps (reals, then fakes: one forward each)."""
    opt_d, opt_g = torch.optim.SGD(D.parameters(), lr), torch.optim.SGD(G.parameters(), lr)
    for real, z in zip(reals, zs, strict=True):
        x = real.clone().requires_grad_(bool(gamma))
        x_fake = G(z).detach().requires_grad_(bool(gamma))
        s_real, s_fake = D(x), D(x_fake)
        d_loss = F.softplus(-(s_real - s_fake)).mean()
        if gamma:
            (g_real,) = torch.autograd.grad(s_real.sum(), x, create_graph=True)
            (g_fake,) = torch.autograd.grad(s_fake.sum(), x_fake, create_graph=True)
            r1, r2 = g_real.square().sum(1).mean(), g_fake.square().sum(1).mean()
            d_loss = d_loss + gamma / 2 * (r1 + r2)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    s_real = D(reals[-1]).detach()
    g_loss = F.softplus(-(D(G(zs[-1])) - s_real)).mean()
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()


@pytest.mark.parametrize(
    "n_critic, batchnorm, gamma",
    [(1, False, 0.5), (2, False, 0.5), (2, True, 0.0)],
    ids=["joint-r1-r2", "two-d-steps", "batchnorm"],
)
def test_the_rpgan_step_is_r3gans_game(n_critic, batchnorm, gamma):
    gen = torch.Generator().manual_seed(0)
    reals = [torch.rand(8, 6, generator=gen) * 2 - 1 for _ in range(n_critic)]
    zs = [torch.randn(8, 4, generator=gen) for _ in range(n_critic)]
    torch.manual_seed(0)
    nets = {"G": TinyG(), "D": TinyD(batchnorm)}
    ref = {k: copy.deepcopy(v) for k, v in nets.items()}
    start = snapshot(nets)
    opts = {k: torch.optim.SGD(v.parameters(), lr=0.1) for k, v in nets.items()}
    draws = iter(zs)
    game = GameSettings(loss="rpgan", r1=gamma, r2=gamma)
    out = adversarial_step(nets, opts, [(r, None) for r in reals], lambda n: next(draws), game)
    rpgan_by_hand(ref["G"], ref["D"], reals, zs, gamma=gamma, lr=0.1)
    assert all_moved(start, nets) and (not gamma or float(out["loss/r2"]) > 0)
    for name in ("G", "D"):  # weights, and BatchNorm's running statistics
        for key, value in nets[name].state_dict().items():
            torch.testing.assert_close(value, ref[name].state_dict()[key], msg=f"{name}.{key}")


@pytest.mark.parametrize(
    "policy",
    [("color",), ("translation",), ("cutout",), ("color", "translation", "cutout")],
    ids=",".join,
)
def test_diff_augment_is_differentiable_twice_and_random_per_image(policy):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16).repeat(16, 1, 1, 1).requires_grad_(True)  # 16 copies of one
    y = diff_augment(x, policy)
    assert y.shape == x.shape
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    g.sum().backward()  # the double backward gradient penalties need
    assert torch.isfinite(x.grad).all()
    # one draw for the whole batch would augment every copy alike
    assert len(torch.unique(y.detach().flatten(1), dim=0)) > 1


def test_translation_shifts_and_cutout_zeroes_a_square():
    torch.manual_seed(0)
    x = torch.arange(1.0, 65.0).reshape(1, 1, 8, 8).repeat(32, 1, 1, 1)
    shifted = diff_augment(x, ("translation",))
    for img in shifted[:, 0]:  # each image is x moved by at most 1 pixel, padded with zeros
        kept = img[img > 0]
        assert len(kept) >= 49 and (torch.diff(img, dim=1)[img[:, 1:] * img[:, :-1] > 0] == 1).all()
    cut = diff_augment(torch.ones(32, 1, 8, 8), ("cutout",))
    zeros = (cut == 0).sum(dim=(1, 2, 3))
    assert (zeros > 0).all() and (zeros <= 16).all()  # at most a 4 x 4 square, clipped at edges


# ---- the step against the textbook loop, and where autocast reaches -----------------------------


class TinyG(nn.Module):
    """z (B, 4) -> x (B, 6) in [-1, 1]; ignores labels."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6), nn.Tanh())

    def forward(self, z, labels=None):
        return self.net(z)


class TinyD(nn.Module):
    """x (B, 6) -> logits (B,); with BatchNorm the step scores reals and fakes separately."""

    def __init__(self, batchnorm: bool = False):
        super().__init__()
        norm = nn.BatchNorm1d(16) if batchnorm else nn.Identity()
        self.net = nn.Sequential(nn.Linear(6, 16), norm, nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x, labels=None):
        return self.net(x).squeeze(1)


def textbook_step(G, D, reals, zs, lr):
    """Goodfellow et al.'s Algorithm 1 with the non-saturating G loss, written out with plain
    SGD: one D step per real batch on -log D(x) - log(1 - D(G(z))), then G on -log D(G(z)),
    G run again on the last z (Algorithm 1 would draw a new z; gankit reuses its last fake).
    Returns D's gradient of its last step."""
    opt_d, opt_g = torch.optim.SGD(D.parameters(), lr), torch.optim.SGD(G.parameters(), lr)
    bce = F.binary_cross_entropy_with_logits
    for real, z in zip(reals, zs, strict=True):
        fake = G(z)
        d_loss = bce(D(real), torch.ones(len(real))) + bce(D(fake.detach()), torch.zeros(len(z)))
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    d_grads = [p.grad.clone() for p in D.parameters()]
    g_loss = bce(D(G(zs[-1])), torch.ones(len(zs[-1])))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    return d_grads


def gankit_and_textbook(n_critic: int, batchnorm: bool):
    """The same tiny G and D, data and z, stepped once by adversarial_step and by the textbook
    loop. SGD, not Adam: Adam's first step is lr * sign(grad), blind to a gradient's scale."""
    gen = torch.Generator().manual_seed(0)
    reals = [torch.rand(8, 6, generator=gen) * 2 - 1 for _ in range(n_critic)]
    zs = [torch.randn(8, 4, generator=gen) for _ in range(n_critic)]
    torch.manual_seed(0)
    nets = {"G": TinyG(), "D": TinyD(batchnorm)}
    ref = {k: copy.deepcopy(v) for k, v in nets.items()}
    start = snapshot(nets)
    opts = {k: torch.optim.SGD(v.parameters(), lr=0.1) for k, v in nets.items()}
    draws = iter(zs)
    adversarial_step(nets, opts, [(r, None) for r in reals], lambda n: next(draws))
    d_grads = textbook_step(ref["G"], ref["D"], reals, zs, lr=0.1)
    return nets, ref, d_grads, start


@pytest.mark.parametrize("n_critic", [1, 2])
@pytest.mark.parametrize("batchnorm", [False, True], ids=["joint", "batchnorm"])
def test_adversarial_step_equals_the_textbook_loop(n_critic, batchnorm):
    nets, ref, _, start = gankit_and_textbook(n_critic, batchnorm)
    assert all_moved(start, nets)
    for name in ("G", "D"):  # weights, and BatchNorm's running statistics
        for key, value in nets[name].state_dict().items():
            torch.testing.assert_close(value, ref[name].state_dict()[key], msg=f"{name}.{key}")


def test_the_g_step_leaves_no_gradient_in_d():
    nets, _, d_grads, _ = gankit_and_textbook(n_critic=1, batchnorm=False)
    for p, expected in zip(nets["D"].parameters(), d_grads, strict=True):
        torch.testing.assert_close(p.grad, expected)  # what the D step left, nothing added


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def watch_autocast(nets, opts) -> dict[str, list[bool]]:
    """Whether autocast is on in every forward of a network, in every backward pass (at each
    parameter, and at each network output: the penalties' autograd.grad reaches no
    parameter), and at every optimiser step."""
    seen = {"forward": [], "backward": [], "step": []}

    def on(*_):
        return torch.is_autocast_enabled("cpu")

    def watch_outputs(net, args, out):
        for t in out if isinstance(out, tuple) else (out,):
            if t.requires_grad:
                t.register_hook(lambda g: seen["backward"].append(on()))

    for net in nets.values():
        net.register_forward_pre_hook(lambda *a: seen["forward"].append(on()))
        net.register_forward_hook(watch_outputs)
        for p in net.parameters():
            p.register_hook(lambda g: seen["backward"].append(on()))
    for opt in opts.values():
        opt.register_step_pre_hook(lambda *a: seen["step"].append(on()))
    return seen


def assert_forwards_only(seen: dict[str, list[bool]]) -> None:
    assert seen["forward"] and all(seen["forward"])
    assert seen["backward"] and not any(seen["backward"])
    assert seen["step"] and not any(seen["step"])


AMP_CASES = {f: (f, {}) for f in TINY_MODEL} | {
    "mlp-penalties": ("mlp", {"loss": "wgan-gp", "train.r1": 10.0}),  # their own autograd.grad
    "dcgan-acgan": ("dcgan", {"cond": "acgan"}),
}


@pytest.mark.parametrize("family, overrides", AMP_CASES.values(), ids=AMP_CASES.keys())
def test_only_forward_passes_and_losses_run_under_autocast(family, overrides):
    cfg = model_cfg(family, **overrides)
    nets = build(cfg)
    opts = make_optimizers(nets, {k: 1e-3 for k in players(nets)}, (0.5, 0.999))
    seen = watch_autocast(nets, opts)
    game = GameSettings(loss=cfg.train.loss, r1=cfg.train.r1, autocast=bf16_autocast)
    out = one_step(cfg, nets, game, opts)
    assert_forwards_only(seen)
    assert all(math.isfinite(float(v)) for v in out.values())


@pytest.mark.parametrize("stage", ["srresnet", "srgan"])
def test_only_srgan_forward_passes_and_losses_run_under_autocast(stage):
    torch.manual_seed(0)
    cfg = srgan.Config(stage=stage, n_blocks=1, nf=8, ndf=8, content="pixel")
    nets = srgan.build(cfg, (3, 32, 32))
    opts = make_optimizers(nets, {k: 1e-3 for k in nets}, (0.9, 0.999))
    seen = watch_autocast(nets, opts)
    hr = torch.rand(2, 3, 32, 32) * 2 - 1
    out = srgan.step(nets, opts, [(hr, None)], None, GameSettings(autocast=bf16_autocast))
    assert_forwards_only(seen)
    assert all(math.isfinite(float(v)) for v in out.values())
