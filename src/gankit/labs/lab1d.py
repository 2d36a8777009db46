"""`gankit lab 1d`: Figure 1 of Goodfellow et al. (2014), live.

Each snapshot draws, over x, the data density p_data (dotted black), the model
density p_model (green; a Gaussian kernel density estimate of 5,000 samples of G),
the discriminator D(x) (dashed blue) and, below, lines from a grid of z (lower line)
to G(z) (upper line). Theory: for a fixed G the best D is
D*(x) = p_data / (p_data + p_model); at the equilibrium p_model = p_data and D = 1/2.

With `freeze_g`, G is the fixed affine map x = g_loc + g_scale * z, so p_model is
known exactly (N(g_loc, g_scale^2) for normal z; uniform on g_loc +- g_scale for
uniform z), only D trains, and D* is drawn beside it (dash-dot red).

A run folder holds config.yaml, TensorBoard scalars (loss/D, loss/G, w1, d_gap),
frames/step-NNNNNNNN.png, strip.png (up to 5 frames side by side) and training.gif.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gankit.errors import GankitError
from gankit.labs.players import Discriminator, Generator, sample_z
from gankit.losses import GAN_LOSSES
from gankit.schedule import lr_ramp
from gankit.toy import GaussianMixture1D, optimal_discriminator


@dataclass
class Lab1DConfig:
    mean: list[float] = field(default_factory=lambda: [2.0])  # p_data's component means
    std: list[float] = field(default_factory=lambda: [0.5])  # their stds (one = shared)
    z: str = "normal"  # normal | uniform on [-1, 1]
    steps: int = 3000  # G updates (D updates with freeze_g)
    every: int = 150  # draw a frame every N steps
    seed: int = 0
    batch_size: int = 256
    k: int = 5  # D updates per G update (Goodfellow et al.'s k): D stays near D*
    width: int = 64  # hidden units of G; D has twice as many
    lr: float = 1e-3  # Adam, both players
    decay: float = 0.3  # LR falls linearly to 0 over this final fraction of steps
    freeze_g: bool = False  # train D alone against the fixed affine G below
    g_loc: float = 0.0  # frozen G: x = g_loc + g_scale * z
    g_scale: float = 1.0

    def validate(self) -> None:
        if not self.mean:
            raise GankitError("--mean needs at least one value")
        if len(self.std) not in (1, len(self.mean)):
            raise GankitError("--std takes one value or one per --mean")
        if min(self.std) <= 0 or self.g_scale <= 0:
            raise GankitError("--std and --g-scale must be > 0")
        if self.z not in ("uniform", "normal"):
            raise GankitError(f"unknown --z {self.z!r}: uniform | normal")
        if self.k < 1 or self.steps < 1 or self.every < 1 or self.batch_size < 2 or self.width < 1:
            raise GankitError("--k, --steps, --every, --width must be >= 1, --batch-size >= 2")
        if not 0 <= self.decay <= 1:
            raise GankitError("--decay must be in [0, 1]")

    def target(self) -> GaussianMixture1D:
        stds = self.std * len(self.mean) if len(self.std) == 1 else self.std
        return GaussianMixture1D(means=tuple(self.mean), stds=tuple(stds))


class AffineG(nn.Module):
    """The frozen generator x = loc + scale * z, whose density is known."""

    def __init__(self, loc: float, scale: float):
        super().__init__()
        self.loc, self.scale = loc, scale

    def forward(self, z):
        return self.loc + self.scale * z  # (B, 1) -> (B, 1)


def frozen_density(cfg: Lab1DConfig, x: torch.Tensor) -> torch.Tensor:
    """The exact p_model of the frozen G at x (n,)."""
    if cfg.z == "normal":
        return GaussianMixture1D(means=(cfg.g_loc,), stds=(cfg.g_scale,)).prob(x)
    inside = (x - cfg.g_loc).abs() <= cfg.g_scale
    return inside.float() / (2 * cfg.g_scale)


def kde(samples: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gaussian kernel density estimate at x (m,) from samples (n,), Silverman's bandwidth."""
    n = len(samples)
    h = 1.06 * samples.std().clamp(min=1e-3) * n ** (-0.2)
    u = (x[:, None] - samples[None, :]) / h  # (m, n)
    return torch.exp(-0.5 * u**2).sum(1) / (n * h * (2 * torch.pi) ** 0.5)


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> float:
    """W1 between two equal-size 1D samples: the mean gap between their sorted values."""
    return (a.flatten().sort().values - b.flatten().sort().values).abs().mean().item()


def support(p_data: torch.Tensor, p_model: torch.Tensor) -> torch.Tensor:
    """Where the two densities' average is at least 1% of its peak: a boolean mask."""
    avg = (p_data + p_model) / 2
    return avg >= 0.01 * avg.max()


def run_lab1d(cfg: Lab1DConfig, run_dir: Path) -> dict:
    """Train and draw. Returns w1 (final, and w1_start), d_gap (max |D - 1/2| where
    p_data is at least 10% of its peak) and, with freeze_g, d_star_gap (max |D - D*| over the support); seconds."""
    import yaml
    from torch.utils.tensorboard import SummaryWriter

    t0 = time.perf_counter()
    cfg.validate()
    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    (run_dir / "frames").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    writer = SummaryWriter(str(run_dir))

    target = cfg.target()
    torch.manual_seed(cfg.seed)
    G = AffineG(cfg.g_loc, cfg.g_scale) if cfg.freeze_g else Generator(1, 1, cfg.width, 2)
    D = Discriminator(1, 2 * cfg.width, 2)
    opts = [torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(0.5, 0.999))]
    if not cfg.freeze_g:
        opts.append(torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.5, 0.999)))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_ramp(cfg.steps, cfg.decay)) for o in opts]
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    eval_gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    z_eval = sample_z(10_000, 1, cfg.z, eval_gen)  # (10000, 1)
    real_eval = target.sample(10_000, eval_gen)  # (10000, 1)

    # A fixed x range for every frame: the data +- 4 std and where G starts.
    with torch.no_grad():
        start = G(z_eval).flatten()
    lo = min(
        min(m - 4 * s for m, s in zip(target.means, target.stds, strict=True)),
        start.quantile(0.005).item(),
    )
    hi = max(
        max(m + 4 * s for m, s in zip(target.means, target.stds, strict=True)),
        start.quantile(0.995).item(),
    )
    xs = torch.linspace(lo, hi, 400)  # (400,)
    p_data = target.prob(xs)

    losses = GAN_LOSSES["non-saturating"]
    frames, out, render_s = [], {}, 0.0
    for step in range(0, cfg.steps + 1):
        if step > 0:
            # ---- D: k steps minimising -V(D, G)
            for _ in range(1 if cfg.freeze_g else cfg.k):
                real = target.sample(cfg.batch_size, gen)  # (B, 1)
                with torch.no_grad():
                    fake = G(sample_z(cfg.batch_size, 1, cfg.z, gen))  # (B, 1)
                l_d = losses.d(D(real), D(fake))
                opts[0].zero_grad(set_to_none=True)
                l_d.backward()
                opts[0].step()
            scalars = {"loss/D": l_d.item()}
            # ---- G: minimise -log D(G(z))
            if not cfg.freeze_g:
                l_g = losses.g(D(G(sample_z(cfg.batch_size, 1, cfg.z, gen))))
                opts[1].zero_grad(set_to_none=True)
                l_g.backward()
                opts[1].step()
                D.zero_grad(set_to_none=True)
                scalars["loss/G"] = l_g.item()
            for s in scheds:
                s.step()
        if step % cfg.every and step != cfg.steps:
            continue
        with torch.no_grad():
            fake = G(z_eval).flatten()
            d_x = torch.sigmoid(D(xs[:, None]))  # (400,)
        p_model = frozen_density(cfg, xs) if cfg.freeze_g else kde(fake[:5000], xs)
        mask = support(p_data, p_model)
        core = p_data >= 0.1 * p_data.max()  # where the data lives: D should read 1/2 there
        out = {
            "w1": wasserstein_1d(fake, real_eval),
            "d_gap": (d_x - 0.5).abs()[core].max().item(),
        }
        d_star = optimal_discriminator(p_data, p_model)
        if cfg.freeze_g:
            out["d_star_gap"] = (d_x - d_star).abs()[mask].max().item()
        if step == 0:
            w1_start = out["w1"]
        for k, v in out.items():
            writer.add_scalar(k, v, step)
        if step > 0:
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
        t_r = time.perf_counter()
        z_grid = torch.linspace(-1, 1, 21)[:, None] * (1 if cfg.z == "uniform" else 2.5)
        with torch.no_grad():
            x_grid = G(z_grid).flatten()
        frame = render(
            xs,
            p_data,
            p_model,
            d_x,
            d_star if cfg.freeze_g else None,
            z_grid.flatten(),
            x_grid,
            f"step {step}: W1 = {out['w1']:.3f}, max|D - 1/2| = {out['d_gap']:.2f}"
            + (f", max|D - D*| = {out['d_star_gap']:.3f}" if cfg.freeze_g else ""),
        )
        frame.save(run_dir / "frames" / f"step-{step:08d}.png")
        frames.append(frame)
        render_s += time.perf_counter() - t_r
    writer.close()
    save_strip(frames, run_dir / "strip.png")
    frames[0].save(
        run_dir / "training.gif", save_all=True, append_images=frames[1:], duration=150, loop=0
    )
    return out | {
        "w1_start": w1_start,
        "seconds": time.perf_counter() - t0,
        "render_seconds": render_s,
    }


def render(xs, p_data, p_model, d_x, d_star, z_grid, x_grid, title: str):
    """One Figure 1-style panel as a PIL image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    lo, hi = xs[0].item(), xs[-1].item()
    # Densities may exceed 1; a spiky p_model (G's start) is clipped at 2x p_data's peak.
    top = max(1.0, p_data.max().item(), min(p_model.max().item(), 2 * p_data.max().item())) * 1.05
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    ax.plot(xs, p_data, ":", color="black", lw=2, label="p_data")
    ax.plot(xs, p_model, "-", color="green", lw=1.5, label="p_model")
    ax.plot(xs, d_x, "--", color="tab:blue", lw=1.5, label="D(x)")
    if d_star is not None:
        ax.plot(xs, d_star, "-.", color="tab:red", lw=1, label="D*(x)")
    # The mapping x = G(z): z on the lower line (spread over the x range), G(z) on the upper.
    y_x, y_z = -0.12 * top, -0.4 * top
    z_pos = lo + (z_grid - z_grid.min()) / (z_grid.max() - z_grid.min()) * (hi - lo)
    ax.axhline(y_x, color="gray", lw=0.8)
    ax.axhline(y_z, color="gray", lw=0.8)
    for zp, xp in zip(z_pos.tolist(), x_grid.tolist(), strict=True):
        ax.annotate("", xy=(xp, y_x), xytext=(zp, y_z), arrowprops={"arrowstyle": "->", "lw": 0.6})
    ax.text(lo, y_z, "z ", ha="right", va="center", fontsize=8)
    ax.text(lo, y_x, "x ", ha="right", va="center", fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(1.1 * y_z, top)
    ax.set_title(title, fontsize=7)
    ax.legend(fontsize=6, loc="upper left")
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba())
    plt.close(fig)
    return image.convert("RGB")


def save_strip(frames: list, path: Path, n: int = 5) -> None:
    """Up to n frames, evenly spaced from first to last, side by side."""
    from PIL import Image

    idx = sorted({round(i * (len(frames) - 1) / max(n - 1, 1)) for i in range(n)})
    picked = [frames[i] for i in idx]
    w, h = picked[0].size
    strip = Image.new("RGB", (w * len(picked), h), "white")
    for i, f in enumerate(picked):
        strip.paste(f, (i * w, 0))
    strip.save(path)
