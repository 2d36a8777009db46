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

import errno
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from gankit import checkpoint as ckpt
from gankit import distributed, files
from gankit.augment import parse_policy
from gankit.config import Config, save_config
from gankit.data import BatchSampler, Dataset, make_dataset, to_uint8, to_unit_range
from gankit.device import amp_note, autocast
from gankit.distributed import Dist
from gankit.errors import GankitError
from gankit.evaluate import Evaluator, append_jsonl, badness, timestamp
from gankit.game import GameSettings, add_ema, make_optimizers, sampling_nets
from gankit.grids import save_grid
from gankit.metrics.diversity import diversity
from gankit.models import MODELS, is_conditional
from gankit.schedule import Ramp, gamma_ramp, lr_ramp, noise_ramp


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
    lr_ramp: Ramp  # the learning rates' schedule (gankit.schedule)
    noise_ramp: Ramp  # instance noise's
    gamma_ramp: Ramp  # the R1 and R2 weights'
    fingerprint: str  # the training data's digest
    run_dir: Path = Path(".")  # only rank 0 writes into it
    step: int = 0
    best: dict | None = None  # {"metric", "value", "step"} of checkpoints/best
    lr_factor: float = 1.0  # product of the rollbacks' factors on both learning rates
    rollbacks: int = 0  # rollbacks in a row, none of which got past the failing step
    failed_at: int = 0  # the step where training last went non-finite
    diversity_peak: float = 0.0  # the fixed batch's highest diversity so far (rank 0)
    collapsed: bool = False  # the collapse alarm is raised

    def learning_rates(self) -> None:
        """Set each optimiser's rate for the coming update: base x rollback factor x schedule."""
        scale = self.lr_factor * self.lr_ramp(self.step)
        for name, opt in self.opts.items():
            for group in opt.param_groups:
                group["lr"] = self.lr[name] * scale

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
            "schedules": {
                "lr": self.lr_ramp.to_list(),
                "noise": self.noise_ramp.to_list(),
                "gamma": self.gamma_ramp.to_list(),
            },
            "guard": {
                "lr_factor": self.lr_factor,
                "rollbacks": self.rollbacks,
                "failed_at": self.failed_at,
            },
            "diversity": {"peak": self.diversity_peak, "collapsed": self.collapsed},
            "data_fingerprint": self.fingerprint,
        }
        return meta, extra

    def restore(self, path: Path, new_data: bool = False, log=print) -> None:
        """Load a checkpoint's networks, optimisers, schedules and every RNG state (any world
        size). A checkpoint of other training data is refused unless `new_data`."""
        if not path.is_file():
            raise GankitError(f"no checkpoint to resume from: {path} does not exist")
        try:
            self._restore(path, new_data, log)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise GankitError(
                f"checkpoint {path} lacks or garbles what a resume needs ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None

    def _restore(self, path: Path, new_data: bool, log) -> None:
        meta = ckpt.read_meta(path)
        saved = meta.get("data_fingerprint")
        if saved and saved != self.fingerprint:
            if not new_data:
                raise GankitError(
                    f"{path} was trained on other data than {self.data.source} (fingerprint "
                    f"{saved[:12]}, this data {self.fingerprint[:12]}): resume on the same data, "
                    "or pass --new-data to go on with this data"
                )
            log(f"warning: resuming on other data than the checkpoint's ({self.data.source})")
        meta, extra = ckpt.load_checkpoint(path, self.nets, self.opts)
        t, steps = self.cfg.train, int(meta["step"])
        before = meta["config"]["train"]
        ramps = meta.get("schedules") or {  # a checkpoint of a gankit without them
            "lr": lr_ramp(before["steps"], before["lr_decay"]).to_list(),
            "noise": noise_ramp(before["steps"]).to_list(),
        }
        self.lr_ramp = Ramp.from_list(ramps["lr"]).extended(
            steps, t.steps, round(t.lr_decay * t.steps)
        )
        self.noise_ramp = Ramp.from_list(ramps["noise"]).extended(steps, t.steps, t.steps)
        gamma = ramps.get("gamma") or gamma_ramp(before["steps"]).to_list()
        self.gamma_ramp = Ramp.from_list(gamma).extended(steps, t.steps, t.steps)
        guard = meta.get("guard", {})
        self.lr_factor = float(guard.get("lr_factor", 1.0))
        self.rollbacks = int(guard.get("rollbacks", 0))
        self.failed_at = int(guard.get("failed_at", 0))
        alarm = meta.get("diversity", {})
        self.diversity_peak = float(alarm.get("peak", 0.0))
        self.collapsed = bool(alarm.get("collapsed", False))
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
    lr = {k: t.lr_d if k.startswith("D") else t.lr_g for k in nets if not k.endswith("_ema")}
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
        lr_ramp(t.steps, t.lr_decay),
        noise_ramp(t.steps),
        gamma_ramp(t.steps),
        data.fingerprint(),
        run_dir,
    )
    game = GameSettings(
        loss=t.loss,
        real_target=1.0 - t.label_smoothing,
        gp_weight=t.gp_weight,
        r1=t.r1,
        r2=t.r2,
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

    def event(self, tag: str, text: str, step: int) -> None:
        """A line TensorBoard shows under Text, events/<tag>."""
        if self.writer:
            self.writer.add_text(f"events/{tag}", text, step)

    def close(self) -> None:
        self.bar.close()
        if self.writer:
            self.writer.close()


def penalty_factor(t, run: Run) -> float:
    """What R1 and R2 are multiplied by at this step: gamma_final's ramp, and lazy
    regularisation's reg_every (the penalties on one step in reg_every, x reg_every)."""
    if run.step % t.reg_every:
        return 0.0
    return t.reg_every * (t.gamma_final + (1 - t.gamma_final) * run.gamma_ramp(run.step))


class Scalars:
    """Running sums of the step's scalars stay on the device (no sync per step); every
    log_every steps their window means, averaged over the ranks, are logged."""

    def __init__(self, run: Run):
        self.every = run.cfg.train.log_every
        self.last: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        self.window, self.counts, self.n, self.t0 = {}, {}, 0, time.perf_counter()

    def add(self, out: dict) -> None:
        for k, v in out.items():  # some only on some steps (R1 and R2 under train.reg_every)
            self.window[k] = self.window.get(k, 0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.n += 1

    def __call__(self, run: Run, out: dict, book: Logbook) -> None:
        t = run.cfg.train
        if not _due(run.step, self.every, t.steps):
            return
        now = time.perf_counter()
        means = {k: v / self.counts[k] for k, v in self.window.items()}
        means = distributed.mean_scalars(run.dist, means)
        means["perf/images_per_s"] = self.n * t.batch_size * t.n_critic / (now - self.t0)
        book.scalars(means, run.step)
        book.bar.set_postfix_str(_postfix(means, run.sampler.epochs_done), refresh=False)
        self.last = means
        self.reset()


class Diverged(GankitError):
    """Training stayed non-finite through train.max_rollbacks rollbacks in a row."""


class Guard:
    """Catches non-finite values and rolls the run back to its last good state.

    There is no check per step: a NaN or Inf in any loss or D output of a step makes the
    running sums of the Scalars window non-finite, and a non-finite gradient makes the
    weights so after the optimiser step. So at every step where anything reads the state
    (a log, a grid, an evaluation, a checkpoint) one check of the window and of every
    weight and buffer decides, with one all-reduce, for every rank at once:
    - all finite: the state is good and is kept in memory (a copy of the networks and
      optimisers) as the state to roll back to;
    - otherwise: back to that state, both learning rates x train.rollback_lr, and the
      batches since then skipped (the sampler goes on). After train.max_rollbacks
      rollbacks in a row the last good state is saved and the run stops (`Diverged`).
    A checkpoint is only ever written right after a check passed, so no non-finite state
    reaches checkpoints/last, best or step-N."""

    def __init__(self, run: Run):
        t = run.cfg.train
        self.every = [e for e in (t.log_every, t.sample_every, t.ckpt_every, t.eval_every) if e]
        self.step, self.copies, self.layout = 0, [], []
        self.keep(run)

    def due(self, step: int, last: int) -> bool:
        return any(_due(step, every, last) for every in self.every)

    def keep(self, run: Run) -> None:
        """Copy the (checked) state, what a rollback returns to: every network's weights and
        buffers and every optimiser's state, into buffers allocated once."""
        with torch.no_grad():
            tensors, layout = _live_state(run)
            if layout == self.layout:
                torch._foreach_copy_(self.copies, tensors)
            else:  # the first time, and once more when Adam's state appears after step 1
                self.copies, self.layout = [t.detach().clone() for t in tensors], layout
        self.step = run.step

    def restore(self, run: Run) -> None:
        with torch.no_grad():
            for opt in run.opts.values():  # the kept state may predate Adam's first step
                opt.state.clear()
                opt.zero_grad(set_to_none=True)
            nets = _net_tensors(run)
            torch._foreach_copy_(nets, self.copies[: len(nets)])
            for (name, i, key), value in zip(
                self.layout[len(nets) :], self.copies[len(nets) :], strict=True
            ):
                opt = run.opts[name]
                opt.state[_params(opt)[i]][key] = value.clone()
        run.step = self.step

    def check(self, run: Run, window: dict) -> str | None:
        """None when every rank's window and weights are finite, else what was not."""
        sums = [torch.as_tensor(v, device=run.device).float() for v in window.values()]
        bad = torch.zeros((), device=run.device)
        if sums:
            bad = bad + (~torch.stack(sums).isfinite()).any()
        names, flags = finite_flags(run.nets)
        bad = bad + (~flags).any()
        if not distributed.any_rank(run.dist, bad):
            return None
        names = [k for k, v in window.items() if not math.isfinite(float(v))] + [
            k for k, ok in zip(names, flags.tolist(), strict=True) if not ok
        ]
        return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") or "on another rank"

    def __call__(self, run: Run, scalars: Scalars, book: Logbook) -> bool:
        """True when the step's state is good (the other parts go on), False after a rollback."""
        t = run.cfg.train
        if not self.due(run.step, t.steps):
            return True
        what = self.check(run, scalars.window)
        if what is None:
            if run.rollbacks and run.step >= run.failed_at:  # got past the failure
                run.rollbacks = 0
            self.keep(run)
            return True
        bad_step, good_step = run.step, self.step
        self.restore(run)
        scalars.reset()
        book.bar.n = run.step
        if run.rollbacks >= t.max_rollbacks:
            save(run)  # the last good state, as last and step-N
            raise Diverged(
                f"training diverged at step {bad_step}: non-finite {what} after "
                f"{run.rollbacks} rollbacks in a row (learning rates x{run.lr_factor:g}); "
                f"checkpoints/last.safetensors holds the last good state, step {good_step}"
            )
        run.rollbacks += 1
        run.failed_at = bad_step
        run.lr_factor *= t.rollback_lr
        line = (
            f"step {bad_step}: non-finite {what}; rolled back to step {good_step} "
            f"(rollback {run.rollbacks} of {t.max_rollbacks}), learning rates now "
            f"x{run.lr_factor:g}, batches {good_step + 1}-{bad_step} skipped"
        )
        book.write(line)
        book.event("rollback", line, bad_step)
        book.scalars({"guard/rollbacks": run.rollbacks, "guard/lr_factor": run.lr_factor}, bad_step)
        return False

    def settle(self, run: Run, window: dict) -> None:
        """Before a save outside the schedule (a stop): back to the good state if this one
        is not."""
        if self.check(run, window) is not None:
            self.restore(run)


def finite_flags(nets: dict[str, torch.nn.Module]) -> tuple[list[str], torch.Tensor]:
    """The names of every floating weight and buffer ("G.net.0.weight") and, on the device,
    whether each is all finite: no sync. (Min and max propagate NaN and show an Inf, and
    aminmax runs ~80x faster than isfinite().all() on a CPU.)"""
    named = [
        (f"{k}.{n}", v)
        for k, net in nets.items()
        for n, v in net.state_dict().items()
        if v.is_floating_point() and v.numel()
    ]
    extremes = torch.stack([torch.stack(torch.aminmax(v.reshape(-1))) for _, v in named])
    return [n for n, _ in named], extremes.isfinite().all(1)


def _params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def _net_tensors(run: Run) -> list[torch.Tensor]:
    return [v for net in run.nets.values() for v in net.state_dict(keep_vars=True).values()]


def _live_state(run: Run) -> tuple[list[torch.Tensor], list]:
    """Every tensor a rollback restores (the networks' state, then the optimisers'), and
    its layout: a key per tensor, for the optimisers (name, parameter index, state key)."""
    nets = _net_tensors(run)
    layout, opt_tensors = [(tuple(t.shape), t.dtype) for t in nets], []
    for name, opt in run.opts.items():
        for i, p in enumerate(_params(opt)):
            for key, value in opt.state.get(p, {}).items():
                layout.append((name, i, key))
                opt_tensors.append(value)
    return nets + opt_tensors, layout


def all_finite(nets: dict[str, torch.nn.Module]) -> bool:
    return bool(finite_flags(nets)[1].all())


class Grids:
    """Rank 0 draws the fixed noise batch every sample_every steps, and watches its
    diversity (gankit.metrics.diversity): one warning line when it falls below
    train.collapse_alarm x its peak, the sign of a generator collapsing to few modes."""

    def __init__(self, run: Run):
        self.every, self.last = run.cfg.train.sample_every, None

    def __call__(self, run: Run, out: dict, book: Logbook) -> None:
        t = run.cfg.train
        if not (run.dist.is_main and _due(run.step, self.every, t.steps)):
            return
        fakes = fixed_noise_images(run.family, run.nets, run.fixed_z, run.fixed_labels)
        path = run.run_dir / "samples" / f"step-{run.step:08d}.png"
        save_unit_grid(fakes, path)
        self.last = path
        book.images("samples/fixed_noise", fakes, run.step)
        if fakes.shape[0] < 2:
            return
        value = diversity(fakes)
        book.scalars({"samples/diversity": value}, run.step)
        run.diversity_peak = max(run.diversity_peak, value)
        low = t.collapse_alarm and value < t.collapse_alarm * run.diversity_peak
        if low and not run.collapsed:
            line = (
                f"step {run.step}: warning: the fixed noise batch's diversity fell to "
                f"{value:.3g}, below {t.collapse_alarm:g} x its peak {run.diversity_peak:.3g}: "
                f"G may be collapsing to few modes (see {path})"
            )
            book.write(line)
            book.event("collapse", line, run.step)
        run.collapsed = bool(low)


def save_unit_grid(images: torch.Tensor, path: Path) -> None:
    """A PNG grid of images in [0, 1], round(sqrt(N)) columns, written atomically."""
    save_grid(path, to_uint8(images * 2 - 1), _nrow(images.shape[0]))


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
        value = results[self.key]
        if better(value, run.best, self.key):
            run.best = {"metric": self.key, "value": value, "step": run.step}
            save_checkpoints(run, ["best.safetensors"])
        b = run.best
        said = (
            f" (best {b['value']:.4g} at step {b['step']})" if b else " (not a number: no best yet)"
        )
        book.write(f"step {run.step}: {self.key} {value:.4g}{said}")


def better(value: float, best: dict | None, key: str) -> bool:
    """Whether `value` of metric `key` beats `best`; a NaN is never best, and anything
    finite beats a NaN best (of a checkpoint of an older gankit)."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best["value"]):
        return True
    return badness(key, value) < badness(key, best["value"])


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
    new_data: bool = False,
) -> Summary:
    """Train `cfg` into `run_dir`; with `resume`, continue from its last checkpoint (on the
    same training data, unless `new_data`).

    `dist`: the process group this rank belongs to (gankit.distributed.setup); None joins
    the one torchrun's variables describe, or none in a plain single process."""
    own_group = dist is None
    d = distributed.setup(cfg.train.device, cfg.train.dist_timeout) if own_group else dist
    lock = files.RunLock(run_dir)  # rank 0 writes: it alone holds the folder
    try:
        return _train(
            cfg,
            Path(run_dir),
            resume,
            progress,
            log if d.is_main else distributed.silent,
            d,
            new_data,
            lambda: distributed.agree(d, lambda: _take(lock, Path(run_dir))),
        )
    except RuntimeError as e:
        if distributed.is_collective_failure(d, e):
            raise distributed.lost_peer(d, e) from None
        raise
    finally:
        lock.release()
        if own_group:
            distributed.teardown(d)


def _take(lock: files.RunLock, run_dir: Path) -> None:
    """Lock the run folder, then clear what killed writers left in it."""
    try:
        lock.acquire()
        for tmp in files.stale_temps(run_dir):
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise write_error(e, "") from None


# What a write that the disk or the folder refuses raises: said in one line, not a traceback.
WRITE_ERRORS = files.DISK_REFUSALS | {errno.EACCES, errno.EPERM}


def write_error(e: OSError, saved: str) -> GankitError:
    """A failed write as one line: what, where, why, and what is still safe."""
    return GankitError(files.describe(e, "write") + saved)


def _train(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    progress: bool,
    log,
    d: Dist,
    new_data: bool,
    take_folder,
) -> Summary:
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
    if resume:  # refused at once while another process trains in the folder
        take_folder()
    run, evaluator, game = build_run(cfg, d, run_dir, log)
    if resume:
        run.restore(last_checkpoint(run_dir), new_data, log)
        log(f"resumed {run_dir} at step {run.step}")
    else:  # only now, so that a refused config or dataset leaves no folder behind
        take_folder()
    start = run.step
    book = None
    try:
        if d.is_main:
            files.write_with(run_dir / "config.yaml", lambda tmp: save_config(cfg, tmp))
        if start >= t.steps:
            log(f"run already at step {start} of {t.steps}: pass --steps N to train longer")
            return Summary(run_dir, start, run.sampler.epochs_done, 0.0, 0.0)
        book = Logbook(run, progress, resume)
        if d.is_main and not resume:
            real_grid = run.data.images[: t.n_fixed] * 0.5 + 0.5
            save_unit_grid(real_grid, run_dir / "samples" / "real.png")
            book.images("data/real", real_grid, 0)
        return _loop(run, evaluator, game, book, start, log)
    except OSError as e:  # disk full, no permission: every write before this one stands
        if e.errno not in WRITE_ERRORS:
            raise
        where = last_checkpoint(run_dir)
        kept = f"; {where} is intact" if where.is_file() else ""
        raise write_error(e, kept) from None
    finally:
        if book:
            try:
                book.close()
            except OSError:  # TensorBoard's last flush on a full disk: the run's error says it
                pass


def _loop(run: Run, evaluator, game: GameSettings, book: Logbook, start: int, log) -> Summary:
    cfg, d = run.cfg, run.dist
    t = cfg.train
    scalars, guard, grids = Scalars(run), Guard(run), Grids(run)
    parts = [scalars, grids]
    if evaluator:
        parts.append(Evaluation(run, evaluator))
    parts.append(Checkpoints(run))
    sync_buffers = d.enabled and not t.sync_bn

    # Forward passes and losses under autocast, backward and optimiser steps outside it;
    # bf16 on a GPU without it is refused here, before any step.
    game = replace(game, autocast=autocast(d.device, t.amp))
    if note := amp_note(d.device, t.amp):
        log(note)
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
            run.learning_rates()
            if t.instance_noise:
                game = replace(game, instance_noise=t.instance_noise * run.noise_ramp(run.step))
            if t.r1 or t.r2:
                f = penalty_factor(t, run)
                game = replace(game, r1=t.r1 * f, r2=t.r2 * f)
            out = run.family.step(
                run.nets, run.opts, batches, run.z_fn, game, train_g=run.step >= t.d_warmup
            )
            if sync_buffers:
                distributed.broadcast_buffers(d, run.nets)
            run.step += 1
            book.bar.update(1)
            scalars.add(out)
            if not guard(run, scalars, book):
                continue  # rolled back: the parts see only good states
            for part in parts:
                part(run, out, book)
        vote.close()
        if stopped:
            guard.settle(run, scalars.window)
            save(run)
            log(f"\nstopped at step {run.step}; resume with: gankit train --resume {run.run_dir}")
    seconds = time.perf_counter() - t0
    done = run.step - start
    return Summary(
        run.run_dir,
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
