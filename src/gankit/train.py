"""The training loop: one function for every family, counting generator steps.

It names no model. `build_run` makes the run's state from the config: the
family's networks from the registry, their optimisers, the batch sampler, the
latent generator and the fixed inputs of the progress grids. The loop then
draws a batch, calls the family's `step`, and hands the result to a short list
of parts that act every k steps, in order:

    Scalars      mean losses and D's outputs of the last window -> TensorBoard, progress bar
    Grids        the fixed noise batch drawn by G (or its EMA) -> PNG and TensorBoard
    Evaluation   metrics of fresh samples -> metrics.jsonl, TensorBoard, checkpoints/best
    Checkpoints  the ranks' consistency check, then checkpoints/last and step-N

With several processes (see gankit.distributed) each part knows its rank rule:
every rank takes part in the collectives, rank 0 alone writes.

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
import torch.distributed as torch_dist
from torchvision.utils import save_image

from gankit import checkpoint as ckpt
from gankit import distributed
from gankit.augment import parse_policy
from gankit.config import Config, save_config
from gankit.data import BatchSampler, Dataset, make_dataset, to_uint8, to_unit_range
from gankit.device import autocast
from gankit.distributed import Dist
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
    images_per_s: float  # real images consumed per second, this invocation (all ranks)
    scalars: dict[str, float] = field(default_factory=dict)  # the last logged window's means
    grid: Path | None = None  # the newest PNG grid


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary and save; twice = now
    (in a single process: a worker of a launcher may get the signal from the terminal and
    from the launcher, and must still save)."""

    def __init__(self, escalate: bool = True):
        self.requested, self.escalate = False, escalate
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and self.escalate:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- the run's state


@dataclass
class Run:
    """Everything a step reads and a checkpoint saves."""

    cfg: Config
    dist: Dist
    family: object  # the model family's module
    data: Dataset
    images: torch.Tensor  # the training images on the device (N, C, H, W)
    labels: torch.Tensor | None  # (N,) for conditional runs
    nets: dict[str, torch.nn.Module]
    opts: dict[str, torch.optim.Optimizer]
    lr: dict[str, float]  # each optimiser's base learning rate
    sampler: BatchSampler  # the global batch's indices
    noise_gen: torch.Generator  # the global batch's latents
    fixed_z: torch.Tensor  # what the progress grids feed G
    fixed_labels: torch.Tensor | None
    run_dir: Path = Path(".")  # only rank 0 writes into it
    step: int = 0
    best: dict | None = None  # {"metric", "value", "step"} of checkpoints/best

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def z_fn(self, n: int) -> torch.Tensor:
        """Latents for this rank's n samples: the global batch of n * N, drawn as one process
        draws it, then this rank's slice."""
        d = self.dist
        return d.shard(
            self.family.noise(self.cfg.model, n * d.world_size, self.noise_gen, self.device)
        )

    def draw(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's slice of the next global batch: (images, labels or None)."""
        idx = self.dist.shard(self.sampler.next()).to(self.device)
        return self.images[idx], self.labels[idx] if self.labels is not None else None

    def state(self) -> tuple[dict, dict]:
        """(JSON metadata, extra tensors) that make a checkpoint resume exactly, at any
        world size: the sampler and the latent generator are global; every rank's own
        torch RNG (dropout, augmentation) is kept too. A collective: every rank calls it."""
        cfg, np_state = self.cfg, np.random.get_state()
        extra = {
            "fixed_z": self.fixed_z,
            "rng.torch": torch.get_rng_state(),
            "rng.noise": self.noise_gen.get_state(),
            "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "sampler.generator": self.sampler.generator.get_state(),
            "sampler.perm": self.sampler.perm,
        }
        for r, s in enumerate(distributed.gather_cpu(self.dist, torch.get_rng_state())):
            if r:
                extra[f"rng.torch.rank{r}"] = s
        if self.device.type == "cuda":
            states = distributed.gather_cpu(self.dist, torch.cuda.get_rng_state(self.device))
            for r, s in enumerate(states):
                extra["rng.cuda" + (f".rank{r}" if r else "")] = s
        meta = {
            "step": self.step,
            "epoch": self.sampler.epochs_done,
            "config": cfg.to_dict(),
            "img_shape": list(self.data.img_shape),
            "classes": self.data.classes,
            "data_source": self.data.source,
            "sampler": {"pos": self.sampler.pos, "epoch": self.sampler.epoch},
            "rng": {
                "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
                "python": _python_rng_json(),
            },
            "world_size": self.dist.world_size,
            "best": self.best,
        }
        return meta, extra

    def restore(self, path: Path) -> None:
        """Load a checkpoint's networks, optimisers and every RNG state (any world size)."""
        if not path.is_file():
            raise GankitError(f"no checkpoint to resume from: {path} does not exist")
        meta, extra = ckpt.load_checkpoint(path, self.nets, self.opts)
        self.sampler.load_state_dict(
            {
                "generator": extra["sampler.generator"],
                "perm": extra["sampler.perm"],
                **meta["sampler"],
            }
        )
        self.noise_gen.set_state(extra["rng.noise"])
        self.step, self.fixed_z = int(meta["step"]), extra["fixed_z"].to(self.device)
        self.best = meta.get("best")
        rank = self.dist.rank
        suffix = f".rank{rank}" if rank else ""
        if f"rng.torch{suffix}" in extra:
            torch.set_rng_state(extra[f"rng.torch{suffix}"])
        else:  # a rank the saving run did not have: a stream of its own
            torch.manual_seed(_rank_seed(self.cfg.train.seed, rank) + self.step)
        if f"rng.cuda{suffix}" in extra and self.device.type == "cuda":
            torch.cuda.set_rng_state(extra[f"rng.cuda{suffix}"], self.device)
        name, pos, has_gauss, cached = meta["rng"]["numpy"]
        np.random.set_state(
            (name, extra["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
        )
        version, internal, gauss = meta["rng"]["python"]
        random.setstate((version, tuple(internal), gauss))


def _rank_seed(seed: int, rank: int) -> int:
    """The torch RNG seed of rank r > 0 (rank 0 keeps the run's own stream)."""
    return seed + 1_000_003 * rank


def _python_rng_json() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def build_run(
    cfg: Config, d: Dist, run_dir: Path, log=print
) -> tuple[Run, Evaluator | None, GameSettings]:
    """The run's state, its evaluator (when train.eval_every is set) and the game's settings."""
    t, device = cfg.train, d.device
    family = MODELS[cfg.model.family]
    data = distributed.main_first(
        d,
        lambda: make_dataset(cfg.data.dataset, cfg.data.root, cfg.data.img_size, cfg.data.channels),
    )
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
    evaluator = None
    if t.eval_every:
        # Before seeding, so that training a classifier the first time never shifts the run's RNG.
        dc = cfg.data
        evaluator = distributed.main_first(
            d, lambda: Evaluator(dc.dataset, dc.root, dc.img_size, dc.channels, device, log, data)
        )
        evaluator.resolve_key(t.best_metric)  # an unknown metric is refused before any step
    content_net = None
    if hasattr(family, "content_network"):  # before seeding, like the evaluator's classifier
        content_net = distributed.main_first(
            d, lambda: family.content_network(cfg.model, data, device, log)
        )

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
    if t.sync_bn and d.enabled:  # the same layers and keys; statistics of the global batch
        nets = {k: distributed.convert_sync_batchnorm(v, device) for k, v in nets.items()}
    if t.channels_last:  # 4D weights only; the values are unchanged
        nets = {k: v.to(memory_format=torch.channels_last) for k, v in nets.items()}
    if t.ema:
        nets = add_ema(nets, t.ema)
    if d.rank:  # identical weights on every rank; dropout and augmentation differ per rank
        torch.manual_seed(_rank_seed(t.seed, d.rank))
    # D, D0, D1...: the discriminators' rate; G, E (a VAE's encoder), G0...: the generators'.
    lr = {k: t.lr_d if k.startswith("D") else t.lr_g for k in nets if k != "G_ema"}
    opts = make_optimizers(nets, lr, (t.beta1, t.beta2))
    distributed.average_gradients(d, opts)
    sampler = BatchSampler(len(data), t.batch_size, t.seed)
    noise_gen = torch.Generator(device).manual_seed(t.seed + 1)
    if hasattr(family, "fixed_inputs"):  # e.g. SRGAN: low-resolution patches, not noise
        fixed_z = family.fixed_inputs(cfg.model, data, t.n_fixed, device)
    else:
        fixed_z = family.noise(
            cfg.model, t.n_fixed, torch.Generator(device).manual_seed(t.seed + 2), device
        )
    run = Run(
        cfg,
        d,
        family,
        data,
        images,
        data.labels.to(device) if conditional else None,
        nets,
        opts,
        lr,
        sampler,
        noise_gen,
        fixed_z,
        # Conditional grids show one class per row.
        grid_labels(t.n_fixed, data.num_classes, device) if conditional else None,
        run_dir,
    )
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
    return run, evaluator, game


# ----------------------------------------------------------------------------- the parts


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


class Logbook:
    """Rank 0's TensorBoard writer and progress bar; on the other ranks, nothing."""

    def __init__(self, run: Run, progress: bool, resume: bool):
        self.writer, t = None, run.cfg.train
        from tqdm.auto import tqdm

        interval = 0.1 if sys.stderr.isatty() else 5.0  # a log file gets a line every few seconds
        self.bar = tqdm(
            total=t.steps,
            initial=run.step,
            unit="step",
            disable=not (progress and run.dist.is_main),
            dynamic_ncols=True,
            mininterval=interval,
        )
        if run.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

            self.writer = SummaryWriter(str(run.run_dir), purge_step=run.step if resume else None)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        if self.writer:
            self.writer.add_images(tag, images, step)

    def write(self, line: str) -> None:
        if self.writer:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
        if self.writer:
            self.writer.close()


class Scalars:
    """Running sums of the step's scalars stay on the device (no sync per step); every
    log_every steps their window means, averaged over the ranks, are logged."""

    def __init__(self, run: Run):
        self.every, self.window, self.n, self.t0 = (
            run.cfg.train.log_every,
            {},
            0,
            time.perf_counter(),
        )
        self.last: dict[str, float] = {}

    def __call__(self, run: Run, out: dict, book: Logbook) -> None:
        for k, v in out.items():
            self.window[k] = self.window.get(k, 0) + v
        self.n += 1
        t = run.cfg.train
        if not _due(run.step, self.every, t.steps):
            return
        now = time.perf_counter()
        means = distributed.mean_scalars(run.dist, {k: v / self.n for k, v in self.window.items()})
        means["perf/images_per_s"] = self.n * t.batch_size * t.n_critic / (now - self.t0)
        book.scalars(means, run.step)
        book.bar.set_postfix_str(_postfix(means, run.sampler.epochs_done), refresh=False)
        self.last, self.window, self.n, self.t0 = means, {}, 0, now


class Grids:
    """Rank 0 draws the fixed noise batch every sample_every steps."""

    def __init__(self, run: Run):
        self.every, self.last = run.cfg.train.sample_every, None

    def __call__(self, run: Run, out: dict, book: Logbook) -> None:
        if not (run.dist.is_main and _due(run.step, self.every, run.cfg.train.steps)):
            return
        fakes = fixed_noise_images(run.family, run.nets, run.fixed_z, run.fixed_labels)
        self.last = run.run_dir / "samples" / f"step-{run.step:08d}.png"
        save_image(fakes, self.last, nrow=_nrow(fakes.shape[0]))
        book.images("samples/fixed_noise", fakes, run.step)


class Evaluation:
    """Every eval_every steps: each rank scores its share of eval_n samples, the features are
    gathered, and rank 0 logs the metrics and keeps the best checkpoint."""

    def __init__(self, run: Run, evaluator: Evaluator):
        self.evaluator, self.every = evaluator, run.cfg.train.eval_every
        self.key = evaluator.resolve_key(run.cfg.train.best_metric)

    def __call__(self, run: Run, out: dict, book: Logbook) -> None:
        t = run.cfg.train
        if not _due(run.step, self.every, t.steps):
            return
        results = evaluate_samples(
            run.family, run.cfg, run.nets, self.evaluator, run.data.num_classes, run.dist
        )
        book.scalars({f"metrics/{k}": v for k, v in results.items()}, run.step)
        if run.dist.is_main:
            record = {"time": timestamp(), "source": "train", "step": run.step, "n": t.eval_n}
            append_jsonl(
                run.run_dir / "metrics.jsonl", record | self.evaluator.info | {"metrics": results}
            )
        value, best = results[self.key], run.best
        if best is None or (
            value < best["value"] if lower_is_better(self.key) else value > best["value"]
        ):
            run.best = {"metric": self.key, "value": value, "step": run.step}
            save_checkpoints(run, ["best.safetensors"])
        b = run.best
        book.write(
            f"step {run.step}: {self.key} {value:.4g} (best {b['value']:.4g} at step {b['step']})"
        )


class Checkpoints:
    """Every ckpt_every steps: the ranks' consistency check, then last and step-N."""

    def __init__(self, run: Run):
        self.every = run.cfg.train.ckpt_every

    def __call__(self, run: Run, out: dict, book: Logbook) -> None:
        if _due(run.step, self.every, run.cfg.train.steps):
            save(run)


def save(run: Run) -> None:
    """checkpoints/step-N (pruned to the newest `keep`) and last, after checking that every
    rank holds the same weights. A collective: every rank calls it, rank 0 writes."""
    distributed.check_consistency(run.dist, run.nets)
    keep = run.cfg.train.keep
    names = [f"step-{run.step:08d}.safetensors"] if keep > 0 else []
    save_checkpoints(run, [*names, "last.safetensors"])
    if run.dist.is_main and keep > 0:
        numbered = sorted((run.run_dir / "checkpoints").glob("step-*.safetensors"))
        for old in numbered[:-keep]:
            old.unlink(missing_ok=True)


def save_checkpoints(run: Run, names: list[str]) -> None:
    meta, extra = run.state()  # every rank: the RNG states are gathered
    if run.dist.is_main:
        for name in names:
            path = run.run_dir / "checkpoints" / name
            ckpt.save_checkpoint(path, run.nets, run.opts, meta, extra)


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: Config,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    log=print,
    dist: Dist | None = None,
) -> Summary:
    """Train `cfg` into `run_dir`; with `resume`, continue from its last checkpoint.

    `dist`: the process group this rank belongs to (gankit.distributed.setup); None joins
    the one torchrun's variables describe, or none in a plain single process."""
    own_group = dist is None
    d = distributed.setup(cfg.train.device, cfg.train.dist_timeout) if own_group else dist
    try:
        return _train(
            cfg, Path(run_dir), resume, progress, log if d.is_main else distributed.silent, d
        )
    except RuntimeError as e:
        if distributed.is_collective_failure(d, e):
            raise distributed.lost_peer(d, e) from None
        raise
    finally:
        if own_group:
            distributed.teardown(d)


def _train(cfg: Config, run_dir: Path, resume: bool, progress: bool, log, d: Dist) -> Summary:
    t = cfg.train
    if t.batch_size % d.world_size:
        raise GankitError(
            f"train.batch_size {t.batch_size} does not divide by {d.world_size} processes: "
            "each rank takes an equal slice of the global batch"
        )
    if t.eval_every and (d.world_size - 1) * -(-t.eval_n // d.world_size) >= t.eval_n:
        raise GankitError(f"train.eval_n {t.eval_n} is too few for {d.world_size} processes")
    if d.enabled:
        backend = torch_dist.get_backend()
        log(
            f"processes: {d.world_size} ({backend} on {d.device.type}), "
            f"{t.batch_size // d.world_size} images per rank of the global batch {t.batch_size}"
        )
    run, evaluator, game = build_run(cfg, d, run_dir, log)
    if resume:
        run.restore(last_checkpoint(run_dir))
        log(f"resumed {run_dir} at step {run.step}")
    start = run.step
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    if start >= t.steps:
        log(f"run already at step {start} of {t.steps}: pass --steps N to train longer")
        return Summary(run_dir, start, run.sampler.epochs_done, 0.0, 0.0)

    book = Logbook(run, progress, resume)
    if d.is_main:
        (run_dir / "samples").mkdir(exist_ok=True)
        if not resume:
            real_grid = run.data.images[: t.n_fixed] * 0.5 + 0.5
            save_image(real_grid, run_dir / "samples" / "real.png", nrow=_nrow(t.n_fixed))
            book.images("data/real", real_grid, 0)
    scalars, grids = Scalars(run), Grids(run)
    parts = [scalars, grids]
    if evaluator:
        parts.append(Evaluation(run, evaluator))
    parts.append(Checkpoints(run))
    sync_buffers = d.enabled and not t.sync_bn

    amp = autocast(d.device, t.amp)  # refuses bf16 on a GPU without it, before any step
    for net in run.nets.values():
        net.train()
    vote = distributed.StopVote(d)
    t0, stopped = time.perf_counter(), False
    with _StopFlag(escalate=not d.enabled) as stop:
        while run.step < t.steps:
            stopped = vote(stop.requested)
            if stopped:
                break
            batches = [run.draw() for _ in range(t.n_critic)]
            if t.lr_decay:  # a function of the step alone, so a resumed run follows it exactly
                scale = lr_scale(run.step, t.steps, t.lr_decay)
                for name, opt in run.opts.items():
                    for group in opt.param_groups:
                        group["lr"] = run.lr[name] * scale
            if t.instance_noise:  # annealed linearly to 0 over the run
                game = replace(game, instance_noise=t.instance_noise * (1 - run.step / t.steps))
            with amp:
                out = run.family.step(
                    run.nets, run.opts, batches, run.z_fn, game, train_g=run.step >= t.d_warmup
                )
            if sync_buffers:
                distributed.broadcast_buffers(d, run.nets)
            run.step += 1
            book.bar.update(1)
            for part in parts:
                part(run, out, book)
        vote.close()
        if stopped:
            save(run)
            log(f"\nstopped at step {run.step}; resume with: gankit train --resume {run_dir}")
    book.close()
    seconds = time.perf_counter() - t0
    done = run.step - start
    return Summary(
        run_dir,
        run.step,
        run.sampler.epochs_done,
        seconds,
        done * t.batch_size * t.n_critic / max(seconds, 1e-9),
        scalars.last,
        grids.last,
    )


def evaluate_samples(
    family, cfg: Config, nets, evaluator, num_classes, d: Dist
) -> dict[str, float]:
    """Metrics of eval_n fresh samples. Always the same latents (seeded from the run's seed),
    G in eval mode, and no draw from the training RNGs, so evaluating never changes training.
    A conditional G draws the classes in turn. Each rank draws its share of the latents and
    the features are gathered, so the metrics equal one process's of the same latents."""
    t = cfg.train
    z = family.noise(cfg.model, t.eval_n, torch.Generator().manual_seed(t.seed + 3), "cpu")
    y = torch.arange(t.eval_n) % num_classes if is_conditional(cfg.model) else None
    mine = distributed.share_of(d, t.eval_n)
    chunks = []
    for i in range(mine.start, mine.stop, 500):
        j = min(i + 500, mine.stop)
        yb = None if y is None else y[i:j].to(d.device)
        chunks.append(fixed_noise_images(family, nets, z[i:j].to(d.device), yb))
    fakes = torch.cat(chunks)
    fakes = to_unit_range(to_uint8(fakes * 2 - 1))  # quantised like saved samples and real images
    seen = {k: distributed.gather_rows(d, v, t.eval_n) for k, v in evaluator.see(fakes).items()}
    return evaluator.score_seen(seen, seed=t.seed, labels=y)


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
