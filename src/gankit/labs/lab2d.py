"""`gankit lab 2d`: mode collapse on the ring and grid mixtures, watched and scored.

Every `every` steps the lab draws G's samples (from the moving average of G's weights
when `ema` is on) over the data with D's output as a heatmap behind them, and scores
2,500 samples with `gankit.metrics.mixture_metrics`
(modes captured, % high quality, reverse KL). A run folder holds:

    config.yaml                   the resolved Lab2DConfig
    events.out.tfevents.*         TensorBoard: loss/D, loss/G, metrics/modes, ...
    metrics.jsonl                 one line per evaluation
    frames/step-NNNNNNNN.png      the snapshots; training.gif animates them
    samples.npy                   the final 2,500 samples, float32 (2500, 2)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gankit.errors import GankitError
from gankit.game import add_ema
from gankit.labs.players import Discriminator, Generator
from gankit.labs.remedies import BEST, REMEDIES, fit_optimal_d, game_step, rejection_sample
from gankit.metrics.mixture import DEFAULT_SAMPLES, mixture_metrics
from gankit.schedule import lr_ramp
from gankit.toy import MIXTURES


@dataclass
class Lab2DConfig:
    mixture: str = "grid"  # ring | grid (gankit.toy.MIXTURES)
    remedy: str = BEST  # a key of REMEDIES; its settings sit between these defaults and options
    steps: int = 3000  # G updates
    every: int = 300  # render and score every N steps
    seed: int = 0
    batch_size: int = 512  # samples per batch (D sees batch_size / pack inputs)
    nz: int = 16  # size of z ~ N(0, I)
    g_width: int = 128
    g_depth: int = 3  # hidden layers
    d_width: int = 128
    d_depth: int = 3
    lr_g: float = 1e-3  # Adam
    lr_d: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.999
    decay: float = 0.5  # LR falls linearly to 0 over this final fraction of steps; 0 = constant
    loss: str = "gan"  # gan | wgan-gp
    n_critic: int = 1  # D updates per G update
    gp_weight: float = 10.0  # WGAN-GP's lambda
    pack: int = 1  # samples per D input; 1 = no packing (PacGAN's m)
    unroll: int = 0  # differentiable D updates G looks ahead through; 0 = none
    drs: int = 0  # after training, steps fitting a fresh D to D* for rejection sampling; 0 = off
    drs_lr: float = 1e-3  # that D's Adam learning rate (falls linearly to 0)
    drs_beta: float = 1.0  # accept with probability ~ (D / (1 - D))^beta; 1 = exact DRS
    r1: float = 0.0  # R1 weight gamma: D's loss adds gamma/2 E|grad D(real)|^2; 0 = off
    ema: float = 0.0  # decay of the moving average of G's weights that draws samples; 0 = off

    def validate(self) -> None:
        if self.mixture not in MIXTURES:
            raise GankitError(f"unknown mixture {self.mixture!r}: {' | '.join(MIXTURES)}")
        if self.remedy not in REMEDIES:
            raise GankitError(f"unknown remedy {self.remedy!r}: {' | '.join(REMEDIES)} | best")
        if self.loss not in ("gan", "wgan-gp"):
            raise GankitError(f"unknown loss {self.loss!r}: gan | wgan-gp")
        for name in ("steps", "every", "batch_size", "nz", "g_width", "g_depth", "d_width"):
            if getattr(self, name) < 1:
                raise GankitError(f"--{name.replace('_', '-')} must be >= 1")
        if self.pack < 1 or self.unroll < 0 or self.n_critic < 1:
            raise GankitError("--pack and --n-critic must be >= 1, --unroll >= 0")
        if self.batch_size % self.pack:
            raise GankitError(
                f"--batch-size {self.batch_size} is not a multiple of --pack {self.pack}"
            )
        if not 0 <= self.decay <= 1:
            raise GankitError("--decay must be in [0, 1]")
        if not 0 <= self.ema < 1:
            raise GankitError("--ema must be in [0, 1): the decay of G's moving average")
        if self.r1 < 0:
            raise GankitError("--r1 must be >= 0")
        if self.r1 and self.loss != "gan":
            raise GankitError("--r1 goes with --loss gan; WGAN-GP has its own gradient penalty")


def resolve(remedy: str | None = None, **options) -> Lab2DConfig:
    """Defaults, then the remedy's tuned settings, then the options that are not None."""
    remedy = BEST if remedy in (None, "best") else remedy
    if remedy not in REMEDIES:
        raise GankitError(f"unknown remedy {remedy!r}: {' | '.join(REMEDIES)} | best")
    fields = {f.name for f in dataclasses.fields(Lab2DConfig)}
    unknown = set(options) - fields
    if unknown:
        raise GankitError(f"unknown lab 2d option(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in options.items() if v is not None}
    cfg = Lab2DConfig(**({"remedy": remedy} | REMEDIES[remedy] | given))
    cfg.validate()
    return cfg


def build(cfg: Lab2DConfig):
    """(G, D, opt_g, opt_d) for `cfg`, initialised from cfg.seed."""
    torch.manual_seed(cfg.seed)
    G = Generator(cfg.nz, 2, cfg.g_width, cfg.g_depth)
    D = Discriminator(2, cfg.d_width, cfg.d_depth, cfg.pack)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=betas)
    return G, D, opt_g, opt_d


def view_box(mixture: str) -> float:
    """Half-width of the square drawn around the data."""
    target = MIXTURES[mixture]()
    return 1.5 * target.modes.abs().max().item()


def render(D, fake, box: float, title: str, real_fixed, pack: int = 1, probs: bool = True):
    """One snapshot as a PIL image: D's output (heatmap), data (black) and fake samples (N, 2).

    probs: D outputs logits (drawn as sigmoid probabilities); False: critic scores.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    axis = torch.linspace(-box, box, 120)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)  # (120 * 120, 2)
    with torch.no_grad():
        # A packed D judges m samples at once: show its output for m copies of each point.
        scores = D(grid.repeat_interleave(pack, 0))  # (120 * 120,)
        heat = scores.sigmoid() if probs else scores
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=80)
    im = ax.imshow(
        heat.reshape(120, 120).numpy(),
        origin="lower",
        extent=(-box, box, -box, box),
        cmap="Blues",
        vmin=0 if probs else None,
        vmax=1 if probs else None,
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="D(x)" if probs else "critic")
    ax.scatter(real_fixed[:, 0], real_fixed[:, 1], s=2, c="black", label="data")
    ax.scatter(fake[:, 0], fake[:, 1], s=2, c="tab:orange", alpha=0.6, label="G(z)")
    ax.set_xlim(-box, box)
    ax.set_ylim(-box, box)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.frombuffer(
        "RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()
    ).convert("RGB")
    plt.close(fig)
    return image


def run_lab2d(cfg: Lab2DConfig, run_dir: Path) -> dict:
    """Train and watch; returns the final metrics plus `seconds` (wall time of the whole run)."""
    import yaml
    from torch.utils.tensorboard import SummaryWriter

    t0 = time.perf_counter()
    cfg.validate()
    torch.set_num_threads(1)  # tiny MLPs: one thread is fastest and leaves the other cores free
    run_dir = Path(run_dir)
    (run_dir / "frames").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    writer = SummaryWriter(str(run_dir))

    target = MIXTURES[cfg.mixture]()
    G, D, opt_g, opt_d = build(cfg)
    sampler = G  # what draws the samples that are scored, drawn and saved
    if cfg.ema:
        G_ema = add_ema({"G": G}, cfg.ema)["G_ema"]
        sampler = G_ema.module
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # data and latents, separate from init
    scheds = [
        torch.optim.lr_scheduler.LambdaLR(o, lr_ramp(cfg.steps, cfg.decay)) for o in (opt_g, opt_d)
    ]
    real_fn = lambda n: target.sample(n, gen)  # noqa: E731
    z_fn = lambda n: torch.randn(n, cfg.nz, generator=gen)  # noqa: E731
    eval_gen = torch.Generator().manual_seed(10_000 + cfg.seed)  # evaluation draws its own
    z_eval = torch.randn(DEFAULT_SAMPLES, cfg.nz, generator=eval_gen)
    real_show = target.sample(1000, eval_gen)
    box = view_box(cfg.mixture)
    frames, metrics, render_s = [], {}, 0.0
    metrics_log = (run_dir / "metrics.jsonl").open("w")
    for step in range(1, cfg.steps + 1):
        scalars = game_step(
            G,
            D,
            opt_g,
            opt_d,
            real_fn,
            z_fn,
            cfg.batch_size,
            cfg.loss,
            cfg.n_critic,
            cfg.gp_weight,
            cfg.unroll,
            gen,
            cfg.r1,
        )
        for s in scheds:
            s.step()
        if cfg.ema:
            G_ema.update_parameters(G)
        if step % cfg.every == 0 or step == cfg.steps:
            with torch.no_grad():
                samples = sampler(z_eval)
            metrics = mixture_metrics(samples, target)
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
            for k, v in metrics.items():
                writer.add_scalar(f"metrics/{k}", v, step)
            metrics_log.write(json.dumps({"step": step} | metrics) + "\n")
            t_r = time.perf_counter()
            title = (
                f"{cfg.remedy}, step {step}: {metrics['modes']:.0f}/{len(target.modes)} modes, "
                f"{metrics['high_quality']:.0f}% HQ"
            )
            frame = render(D, samples[:1000], box, title, real_show, cfg.pack, cfg.loss == "gan")
            frame.save(run_dir / "frames" / f"step-{step:08d}.png")
            frames.append(frame)
            render_s += time.perf_counter() - t_r
    extra = {}
    if cfg.drs:
        # Discriminator rejection sampling: fit a per-sample D to D* against the final G,
        # then keep G's samples with probability proportional to D / (1 - D).
        extra = {f"g_{k}": v for k, v in metrics.items()}  # G alone, for comparison
        D_star = Discriminator(2, cfg.d_width, cfg.d_depth)
        fit_optimal_d(sampler, D_star, real_fn, z_fn, cfg.drs, cfg.batch_size, cfg.drs_lr)
        n_pool = 400 * DEFAULT_SAMPLES  # DRS keeps about 1 in exp(max logit) candidates
        for _ in range(2):  # 1M candidates, then 4M
            z = torch.randn(n_pool, cfg.nz, generator=eval_gen)
            try:
                samples, rate = rejection_sample(
                    sampler,
                    D_star,
                    z,
                    DEFAULT_SAMPLES,
                    torch.rand(n_pool, generator=eval_gen),
                    cfg.drs_beta,
                )
                break
            except RuntimeError:
                n_pool *= 4
        else:
            raise GankitError("rejection sampling accepted too few samples: train longer")
        metrics = mixture_metrics(samples, target)
        extra["drs_accept"] = rate
        for k, v in metrics.items():
            writer.add_scalar(f"metrics/drs_{k}", v, cfg.steps)
        metrics_log.write(json.dumps({"step": cfg.steps, "drs": True} | metrics) + "\n")
        title = (
            f"{cfg.remedy} + DRS: {metrics['modes']:.0f}/{len(target.modes)} modes, "
            f"{metrics['high_quality']:.0f}% HQ"
        )
        frame = render(D_star, samples[:1000], box, title, real_show)
        frame.save(run_dir / "frames" / "drs.png")
        frames.append(frame)
    else:
        with torch.no_grad():
            samples = sampler(z_eval)  # (2500, 2)
    metrics_log.close()
    writer.close()
    import numpy as np

    np.save(run_dir / "samples.npy", samples.numpy().astype(np.float32))
    frames[0].save(
        run_dir / "training.gif", save_all=True, append_images=frames[1:], duration=200, loop=0
    )
    seconds = time.perf_counter() - t0
    return metrics | extra | {"seconds": seconds, "render_seconds": render_s}
