"""The `gankit` command: train, sample, list.

Every user error (a bad option, a missing file, a corrupt checkpoint) ends as one
line on stderr and exit code 2; work already saved is never overwritten.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gankit.errors import GankitError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise GankitError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gankit", description="Build, train, watch and sample GANs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a model",
        description="Train a model. Any config field is also an option: --lr-d 1e-4, --model.nz 100, "
        "--data.dataset folder:PATH (see --dry-run for them all).",
    )
    t.add_argument("--config", help="YAML config file (see configs/)")
    t.add_argument("--steps", help="generator steps to train (with --resume: the new total)")
    t.add_argument("--seed", help="random seed")
    t.add_argument("--name", help="run folder name (default: <family>-<date>-<time>)")
    t.add_argument("--runs-dir", default="runs", help="where run folders go (default: runs)")
    t.add_argument(
        "--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint"
    )
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw images from a trained run")
    s.add_argument("run", help="run folder (or a checkpoint file)")
    s.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    s.add_argument("--out", help="write uint8 images (N, C, H, W) under key 'images' to this .npz")
    s.add_argument("--grid", help="write a PNG grid of the first nrow x nrow images")
    s.add_argument("--nrow", type=int, default=10, help="images per grid row (default: 10)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    s.add_argument("--checkpoint", help="'last' (default), a step number, or a checkpoint path")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    s.add_argument(
        "--batch-size", type=int, default=500, help="images per forward pass (default: 500)"
    )

    sub.add_parser("list", help="list model families, losses and datasets")
    return p


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


def cmd_train(args, extra: list[str]) -> int:
    from gankit.config import apply_overrides, from_dict, load_yaml

    overrides = parse_overrides(extra)
    for key in ("steps", "seed"):
        if getattr(args, key) is not None:
            overrides[f"train.{key}"] = getattr(args, key)
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
        base = load_yaml(args.config) if args.config else {}
    cfg = from_dict(apply_overrides(base, overrides))
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if not args.resume:
        run_dir = new_run_dir(Path(args.runs_dir), args.name, cfg.model.family)

    from gankit.train import train

    print(f"run folder: {run_dir}")
    summary = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
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
    print(f"sample:      gankit sample {run_dir} --n 64 --grid grid.png")
    return 0


def new_run_dir(runs_dir: Path, name: str | None, family: str) -> Path:
    """A run folder that does not exist yet; an explicit name that exists is refused."""
    if name:
        if "/" in name or name in (".", ".."):
            raise GankitError(f"--name {name!r} must be a plain folder name")
        path = runs_dir / name
        if path.exists():
            raise GankitError(
                f"run folder {path} already exists: continue it with --resume {path} or pick another --name"
            )
        return path
    stem = f"{family}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = runs_dir / stem, 1
    while path.exists():
        i += 1
        path = runs_dir / f"{stem}-{i}"
    return path


def cmd_sample(args) -> int:
    from gankit.sample import Sampler, save_grid, save_npz

    if not args.out and not args.grid:
        raise GankitError("say where to write: --out FILE.npz and/or --grid FILE.png")
    if args.out and not args.out.endswith(".npz"):
        raise GankitError(f"--out must end in .npz, got {args.out!r}")
    if args.grid and not args.grid.lower().endswith((".png", ".jpg", ".jpeg")):
        raise GankitError(f"--grid must end in .png or .jpg, got {args.grid!r}")
    if args.n < 1 or args.nrow < 1 or args.batch_size < 1:
        raise GankitError("--n, --nrow and --batch-size must be >= 1")
    sampler = Sampler.load(args.run, args.checkpoint, args.device)
    images = sampler.images(args.n, seed=args.seed, batch_size=args.batch_size)
    if args.out:
        save_npz(args.out, images)
        print(f"wrote {args.out}: images {tuple(images.shape)} uint8 (step {sampler.meta['step']})")
    if args.grid:
        save_grid(args.grid, images[: args.nrow * args.nrow], args.nrow)
        print(f"wrote {args.grid}")
    return 0


def cmd_list() -> int:
    from gankit.data import DATASETS
    from gankit.losses import GAN_LOSSES
    from gankit.models import MODELS

    print("families: " + ", ".join(MODELS))
    print("losses:   " + ", ".join(GAN_LOSSES))
    print("datasets: " + ", ".join(DATASETS))
    configs = sorted(Path("configs").glob("*.yaml"))
    if configs:
        print("presets:  " + ", ".join(str(p) for p in configs))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, extra = build_parser().parse_known_args(argv)
        if args.command == "train":
            return cmd_train(args, extra)
        if extra:
            raise GankitError(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "sample":
            return cmd_sample(args)
        return cmd_list()
    except GankitError as e:
        print(f"gankit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("gankit: interrupted", file=sys.stderr)
        return 130


def main_entry() -> None:
    sys.exit(main())
