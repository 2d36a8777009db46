"""The training loop: one function for every family, counting generator steps.

It names no model. It builds the family's networks from the registry, draws
real batches by index from a tensor on the device, calls the family's `step`,
and around it keeps the bookkeeping: TensorBoard scalars and image grids of a
fixed noise batch, a progress bar, and checkpoints that resume exactly.

A run folder holds:
    config.yaml                    the resolved configuration
    events.out.tfevents.*          TensorBoard logs
    samples/step-NNNNNNNN.png      grids of the fixed noise batch; samples/real.png
    checkpoints/last.safetensors   and step-NNNNNNNN.safetensors (the newest `keep`)
"""

from __future__ import annotations

import random
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from gankit import checkpoint as ckpt
from gankit.augment import parse_policy
from gankit.config import Config, save_config
from gankit.data import BatchSampler, make_dataset, to_uint8, to_unit_range
from gankit.device import autocast, resolve_device
from gankit.errors import GankitError
from gankit.evaluate import Evaluator, append_jsonl, lower_is_better, timestamp
from gankit.game import GameSettings, add_ema, lr_scale, make_optimizers, sampling_nets
from gankit.models import MODELS, is_conditional


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.safetensors"


@dataclass
class Summary:
    run_dir: Path
    step: int  # steps done
    epochs: float  # passes over the data
    seconds: float  # wall time of this invocation's training
    images_per_s: float  # real images consumed per second, this invocation
    scalars: dict[str, float] = field(default_factory=dict)  # the last logged window's means
    grid: Path | None = None  # the newest PNG grid


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary and save; twice = now."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(
    cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True, log=print
) -> Summary:
    """Train `cfg` into `run_dir`; with `resume`, continue from its last checkpoint."""
    t = cfg.train
    run_dir = Path(run_dir)
    device = resolve_device(t.device)
    family = MODELS[cfg.model.family]

    data = make_dataset(cfg.data.dataset, cfg.data.root, cfg.data.img_size, cfg.data.channels)
    log(f"data: {data.source}; {len(data)} images of shape {data.img_shape}")
    if data.images.ndim != 4:
        raise GankitError(
            f"dataset {cfg.data.dataset!r} holds 2D points, not images: the image families cannot train on "
            f"it; score (N, 2) samples with gankit eval --samples FILE.npy --data {cfg.data.dataset}"
        )
    images = data.images.to(device)
    if t.channels_last:  # NHWC: what oneDNN's and cuDNN's fastest convolutions read
        images = images.contiguous(memory_format=torch.channels_last)
    conditional = is_conditional(cfg.model)
    if conditional and data.labels is None:
        raise GankitError(
            f"model.cond {cfg.model.cond!r} needs labels, and {cfg.data.dataset!r} has none "
            f"(an image folder gets labels from its subfolders)"
        )
    labels = data.labels.to(device) if conditional else None
    evaluator = best_key = None
    if t.eval_every:
        # Before seeding, so that training a classifier the first time never shifts the run's RNG.
        d = cfg.data
        evaluator = Evaluator(
            d.dataset, d.root, d.img_size, d.channels, device=device, log=log, train=data
        )
        best_key = evaluator.resolve_key(t.best_metric)

    content_net = None
    if hasattr(family, "content_network"):  # before seeding, like the evaluator's classifier
        content_net = family.content_network(cfg.model, data, device, log)

    # Seed everything a run touches, then build: weights come from the global torch RNG.
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    random.seed(t.seed)
    nets = {
        k: v.to(device)
        for k, v in family.build(cfg.model, data.img_shape, data.num_classes).items()
    }
    if hasattr(family, "initialize"):
        family.initialize(cfg.model, nets, log)
    if t.channels_last:  # 4D weights only; the values are unchanged
        nets = {k: v.to(memory_format=torch.channels_last) for k, v in nets.items()}
    if t.ema:
        nets = add_ema(nets, t.ema)
    # D, D0, D1...: the discriminators' rate; G, E (a VAE's encoder), G0...: the generators'.
    lr = {k: t.lr_d if k.startswith("D") else t.lr_g for k in nets if k != "G_ema"}
    opts = make_optimizers(nets, lr, (t.beta1, t.beta2))
    sampler = BatchSampler(len(data), t.batch_size, t.seed)
    noise_gen = torch.Generator(device).manual_seed(t.seed + 1)
    if hasattr(family, "fixed_inputs"):  # e.g. SRGAN: low-resolution patches, not noise
        fixed_z = family.fixed_inputs(cfg.model, data, t.n_fixed, device)
    else:
        fixed_z = family.noise(
            cfg.model, t.n_fixed, torch.Generator(device).manual_seed(t.seed + 2), device
        )
    # Conditional grids show one class per row.
    fixed_labels = grid_labels(t.n_fixed, data.num_classes, device) if conditional else None

    start, best = 0, None  # best: {"metric", "value", "step"} of checkpoints/best
    if resume:
        start, fixed_z, best = _restore(
            last_checkpoint(run_dir), nets, opts, sampler, noise_gen, device
        )
        log(f"resumed {run_dir} at step {start}")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if start >= t.steps:
        log(f"run already at step {start} of {t.steps}: pass --steps N to train longer")
        return Summary(run_dir, start, sampler.epochs_done, 0.0, 0.0)

    from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

    writer = SummaryWriter(str(run_dir), purge_step=start if resume else None)
    samples_dir = run_dir / "samples"
    samples_dir.mkdir(exist_ok=True)
    if not resume:
        real_grid = data.images[: t.n_fixed] * 0.5 + 0.5
        save_image(real_grid, samples_dir / "real.png", nrow=_nrow(t.n_fixed))
        writer.add_images("data/real", real_grid, 0)

    def z_fn(n: int) -> torch.Tensor:
        return family.noise(cfg.model, n, noise_gen, device)

    def draw() -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = sampler.next().to(device)
        return images[idx], labels[idx] if conditional else None

    def meta(step: int) -> tuple[dict, dict]:
        m, extra = _state(cfg, data, step, sampler, noise_gen, fixed_z)
        return m | {"best": best}, extra

    game = GameSettings(
        loss=t.loss,
        real_target=1.0 - t.label_smoothing,
        gp_weight=t.gp_weight,
        r1=t.r1,
        aux_weight=t.aux_weight,
        aux_fakes=t.aux_fakes,
        augment=parse_policy(t.augment),
        content_net=content_net,
    )

    amp = autocast(device, t.amp)  # refuses bf16 on a GPU without it, before any step
    for net in nets.values():
        net.train()
    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else 5.0  # a log file gets a line every few seconds
    bar = tqdm(
        total=t.steps,
        initial=start,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=interval,
    )
    window: dict[str, torch.Tensor] = {}
    window_n, window_t = 0, time.perf_counter()
    t0, scalars, grid, step = time.perf_counter(), {}, None, start
    with _StopFlag() as stop:
        while step < t.steps and not stop.requested:
            batches = [draw() for _ in range(t.n_critic)]
            if t.lr_decay:  # a function of the step alone, so a resumed run follows it exactly
                scale = lr_scale(step, t.steps, t.lr_decay)
                for name, opt in opts.items():
                    for group in opt.param_groups:
                        group["lr"] = lr[name] * scale
            if t.instance_noise:  # annealed linearly to 0 over the run
                game = replace(game, instance_noise=t.instance_noise * (1 - step / t.steps))
            with amp:
                out = family.step(nets, opts, batches, z_fn, game, train_g=step >= t.d_warmup)
            step += 1
            for k, v in out.items():  # running sums stay on the device: no sync per step
                window[k] = window.get(k, 0) + v
            window_n += 1
            bar.update(1)
            if step % t.log_every == 0 or step == t.steps:
                now = time.perf_counter()
                scalars = {k: float(v) / window_n for k, v in window.items()}
                scalars["perf/images_per_s"] = (
                    window_n * t.batch_size * t.n_critic / (now - window_t)
                )
                for k, v in scalars.items():
                    writer.add_scalar(k, v, step)
                bar.set_postfix_str(_postfix(scalars, sampler.epochs_done), refresh=False)
                window, window_n, window_t = {}, 0, now
            if step % t.sample_every == 0 or step == t.steps:
                fakes = fixed_noise_images(family, nets, fixed_z, fixed_labels)
                grid = samples_dir / f"step-{step:08d}.png"
                save_image(fakes, grid, nrow=_nrow(fakes.shape[0]))
                writer.add_images("samples/fixed_noise", fakes, step)
            if evaluator and (step % t.eval_every == 0 or step == t.steps):
                results = _evaluate(family, cfg, nets, evaluator, data.num_classes, device)
                for k, v in results.items():
                    writer.add_scalar(f"metrics/{k}", v, step)
                append_jsonl(
                    run_dir / "metrics.jsonl",
                    {
                        "time": timestamp(),
                        "source": "train",
                        "step": step,
                        "n": t.eval_n,
                        **evaluator.info,
                        "metrics": results,
                    },
                )
                value = results[best_key]
                if best is None or (
                    value < best["value"] if lower_is_better(best_key) else value > best["value"]
                ):
                    best = {"metric": best_key, "value": value, "step": step}
                    ckpt.save_checkpoint(
                        run_dir / "checkpoints" / "best.safetensors", nets, opts, *meta(step)
                    )
                bar.write(
                    f"step {step}: {best_key} {value:.4g} (best {best['value']:.4g} at step {best['step']})"
                )
            if step % t.ckpt_every == 0 or step == t.steps:
                _save(run_dir, nets, opts, *meta(step), step, t.keep)
        if stop.requested:
            _save(run_dir, nets, opts, *meta(step), step, keep=t.keep)
            log(f"\nstopped at step {step}; resume with: gankit train --resume {run_dir}")
    bar.close()
    writer.close()
    seconds = time.perf_counter() - t0
    done = step - start
    return Summary(
        run_dir,
        step,
        sampler.epochs_done,
        seconds,
        done * t.batch_size * t.n_critic / max(seconds, 1e-9),
        scalars,
        grid,
    )


def _evaluate(family, cfg: Config, nets, evaluator, num_classes, device) -> dict[str, float]:
    """Metrics of eval_n fresh samples. Always the same latents (seeded from the run's seed),
    G in eval mode, and no draw from the training RNGs, so evaluating never changes training.
    A conditional G draws the classes in turn."""
    t = cfg.train
    z = family.noise(cfg.model, t.eval_n, torch.Generator().manual_seed(t.seed + 3), "cpu")
    y = torch.arange(t.eval_n) % num_classes if is_conditional(cfg.model) else None
    chunks = []
    for i in range(0, t.eval_n, 500):
        yb = None if y is None else y[i : i + 500].to(device)
        chunks.append(fixed_noise_images(family, nets, z[i : i + 500].to(device), yb))
    fakes = torch.cat(chunks)
    fakes = to_unit_range(to_uint8(fakes * 2 - 1))  # quantised like saved samples and real images
    return evaluator.score(fakes, seed=t.seed, labels=y)


def grid_labels(n: int, num_classes: int, device) -> torch.Tensor:
    """Labels for an n-image grid of round(sqrt(n)) columns: row r shows class r mod K."""
    return (torch.arange(n, device=device) // _nrow(n)) % num_classes


def _nrow(n: int) -> int:
    return max(1, int(round(n**0.5)))


def _postfix(s: dict[str, float], epoch: float) -> str:
    parts = [f"epoch {epoch:.1f}"]
    names = {"loss/D": "D", "loss/G": "G", "D(x)": "D(x)", "D(G(z))": "D(G(z))"}
    parts += [f"{short} {s[k]:.3f}" for k, short in names.items() if k in s]
    parts.append(f"{s['perf/images_per_s']:.0f} img/s")
    return ", ".join(parts)


@torch.no_grad()
def fixed_noise_images(family, nets, fixed_z, fixed_labels=None) -> torch.Tensor:
    """Images from the fixed noise in [0, 1], with every network in eval mode (BatchNorm uses
    its running statistics and the RNG is not touched, so logging never changes training).
    G's moving average draws them when the run keeps one."""
    modes = {k: n.training for k, n in nets.items()}
    for n in nets.values():
        n.eval()
    x = family.generate(sampling_nets(nets), fixed_z, fixed_labels).float().cpu() * 0.5 + 0.5
    for k, n in nets.items():
        n.train(modes[k])
    return x.clamp(0, 1)


def _state(cfg, data, step, sampler, noise_gen, fixed_z) -> tuple[dict, dict]:
    """(JSON metadata, extra tensors) that make a checkpoint resume exactly."""
    np_state = np.random.get_state()
    extra = {
        "fixed_z": fixed_z,
        "rng.torch": torch.get_rng_state(),
        "rng.noise": noise_gen.get_state(),
        "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "sampler.generator": sampler.generator.get_state(),
        "sampler.perm": sampler.perm,
    }
    if torch.cuda.is_available() and fixed_z.is_cuda:
        extra["rng.cuda"] = torch.cuda.get_rng_state(fixed_z.device)
    meta = {
        "step": step,
        "epoch": sampler.epochs_done,
        "config": cfg.to_dict(),
        "img_shape": list(data.img_shape),
        "classes": data.classes,
        "data_source": data.source,
        "sampler": {"pos": sampler.pos, "epoch": sampler.epoch},
        "rng": {
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _python_rng_json(),
        },
    }
    return meta, extra


def _python_rng_json() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _save(run_dir: Path, nets, opts, meta: dict, extra: dict, step: int, keep: int) -> None:
    folder = run_dir / "checkpoints"
    if keep > 0:
        ckpt.save_checkpoint(folder / f"step-{step:08d}.safetensors", nets, opts, meta, extra)
        numbered = sorted(folder.glob("step-*.safetensors"))
        for old in numbered[:-keep]:
            old.unlink(missing_ok=True)
    ckpt.save_checkpoint(folder / "last.safetensors", nets, opts, meta, extra)


def _restore(
    path: Path, nets, opts, sampler: BatchSampler, noise_gen, device
) -> tuple[int, torch.Tensor]:
    """Load a checkpoint's networks, optimisers and every RNG state; returns (step, fixed_z)."""
    if not path.is_file():
        raise GankitError(f"no checkpoint to resume from: {path} does not exist")
    meta, extra = ckpt.load_checkpoint(path, nets, opts)
    sampler.load_state_dict(
        {"generator": extra["sampler.generator"], "perm": extra["sampler.perm"], **meta["sampler"]}
    )
    noise_gen.set_state(extra["rng.noise"])
    torch.set_rng_state(extra["rng.torch"])
    if "rng.cuda" in extra and device.type == "cuda":
        torch.cuda.set_rng_state(extra["rng.cuda"], device)
    name, pos, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state(
        (name, extra["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    version, internal, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    return int(meta["step"]), extra["fixed_z"].to(device), meta.get("best")
