"""Stacked MNIST's 1,000 modes: the r3gan-stacked-mnist preset over seeds, and a DCGAN
baseline given the same training time.

Each seed trains the preset as `gankit train --config r3gan-stacked-mnist --seed S` would,
then draws 26,000 samples (the count VEEGAN and PacGAN report) and counts the modes the
MNIST classifier reads in them (one digit per colour channel, 10^3 modes) and the KL of the
mode histogram to uniform. The baseline row is the `dcgan` family with the non-saturating
loss (the DCGAN paper's settings, ngf = ndf = 32) trained for as many steps as fit in the
preset's mean training time, measured by timing its first 100 steps.

    python bench/stacked.py [--seeds 3] [--first-seed 0] [--preset r3gan-stacked-mnist]
                            [--steps N] [--no-baseline] [--runs-dir DIR] [--log stacked.jsonl]
    python bench/stacked.py --stack-runs RUN [RUN ...]

--stack-runs scores finished single-digit MNIST runs instead, as a yardstick: each run's
samples three at a time as R, G and B, which is what a generator would draw that renders
each channel as well as that run renders one digit, independently of the other two. Their
KL is close to three times the run's own digits' KL to uniform plus the finite-sample floor,
so it says how good each channel of a stacked generator must be for a given KL.

Published (26,000 samples, modes / KL): DCGAN 99 / 3.40 and PacDCGAN2 1,000 / 0.06 (Lin et
al. 2018); R3GAN 1,000 / 0.029 (Huang et al. 2024, on GPUs). 26,000 uniform draws leave KL
at about 0.02 even for a perfect generator (finite-sample floor).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gankit.config import load_config
from gankit.data import to_unit_range
from gankit.errors import GankitError
from gankit.evaluate import Evaluator
from gankit.metrics.classes import kl_divergence, label_distribution
from gankit.metrics.stacked import DEFAULT_SAMPLES, mode_histogram_scores
from gankit.sample import Sampler
from gankit.train import train

BASELINE = {  # the DCGAN paper's game (BatchNorm, non-saturating, Adam 2e-4 / 0.5), smaller
    "model.family": "dcgan",
    "model.ngf": "32",
    "model.ndf": "32",
    "data.dataset": "stacked-mnist",
    "loss": "non-saturating",
}


def train_and_score(name: str, cfg, runs_dir: Path, evaluator: Evaluator, n: int) -> dict:
    run_dir = runs_dir / name
    t0 = time.perf_counter()
    summary = train(cfg, run_dir, progress=False, log=lambda *a: None)
    wall = time.perf_counter() - t0
    fake = to_unit_range(Sampler.load(run_dir, device=cfg.train.device).images(n, seed=0))
    return {
        "run": name,
        "family": cfg.model.family,
        "loss": cfg.train.loss,
        "seed": cfg.train.seed,
        "steps": summary.step,
        "train_s": round(summary.seconds, 1),
        "wall_s": round(wall, 1),
    } | evaluator.score(fake)


def single_digit_sampler(run: str, device: str) -> Sampler:
    """The sampler of a finished run that draws one-channel images (GankitError otherwise)."""
    sampler = Sampler.load(run, device=device)
    channels = sampler.meta["img_shape"][0]
    if channels != 1:
        raise GankitError(f"run {run} draws {channels}-channel images, not single digits")
    return sampler


def stack_single(run: str, sampler: Sampler, evaluator: Evaluator, n: int) -> dict:
    """A single-digit run's 3n samples as n stacks (the first n red, the next n green, the
    last n blue): their modes and KL, beside the KL of all 3n digits' classes to uniform."""
    digits = to_unit_range(sampler.images(3 * n, seed=0))  # (3n, 1, H, W)
    probs = evaluator.classifier.predict_proba(digits)  # (3n, K), each digit classified once
    classes, k = probs.argmax(1), probs.shape[1]
    digit_kl = kl_divergence(label_distribution(classes, k), torch.full((k,), 1 / k))
    red, green, blue = classes.chunk(3)  # (n,) each: the stacks' channels
    return {"run": run, "digit_kl": digit_kl} | mode_histogram_scores(red * 100 + green * 10 + blue)


def stack_table(rows: list[dict]) -> str:
    out = [
        "| single-digit run | its digits' KL to uniform | modes of its stacks | their KL |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['run']} | {r['digit_kl']:.4f} | {r['stacked_modes']:.0f} "
            f"| {r['stacked_kl']:.3f} |"
        )
    return "\n".join(out)


def baseline_config(batch_size: int, steps: int, device: str):
    return load_config(
        None, BASELINE | {"batch_size": str(batch_size), "steps": str(steps), "device": device}
    )


def baseline_steps(batch_size: int, seconds: float, runs_dir: Path, device: str) -> int:
    """Steps of the baseline that fit in `seconds`, from the time of its first 100 steps."""
    cfg = baseline_config(batch_size, 100, device)
    summary = train(cfg, runs_dir / "baseline-probe", progress=False, log=lambda *a: None)
    return max(100, round(seconds / summary.seconds * 100))


def table(rows: list[dict]) -> str:
    out = [
        "| run | family | loss | seed | steps | training time | modes (of 1,000) | KL to uniform |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['run']} | {r['family']} | {r['loss']} | {r['seed']} | {r['steps']:,} "
            f"| {r['train_s'] / 60:.1f} min | {r['stacked_modes']:.0f} | {r['stacked_kl']:.3f} |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="how many seeds (default: 3)")
    p.add_argument(
        "--first-seed", type=int, default=0, help="the seeds are K .. K+N-1 (default: 0)"
    )
    p.add_argument("--preset", default="r3gan-stacked-mnist")
    p.add_argument("--steps", type=int, help="override the preset's length (quick checks)")
    p.add_argument("--n", type=int, default=DEFAULT_SAMPLES, help="samples scored per run")
    p.add_argument("--no-baseline", action="store_true", help="skip the DCGAN row")
    p.add_argument("--device", default="cpu", help="train and sample on: cpu (default) | cuda")
    p.add_argument("--runs-dir", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--log", help="also append each run's results to this JSON-lines file")
    p.add_argument(
        "--stack-runs",
        nargs="+",
        metavar="RUN",
        help="score these single-digit runs' samples stacked three at a time; train nothing",
    )
    args = p.parse_args()
    if args.seeds < 1 or args.n < 1 or args.first_seed < 0:
        print("stacked: --seeds and --n must be >= 1, --first-seed >= 0", file=sys.stderr)
        return 2
    if args.stack_runs:
        try:  # every run checked before any is scored
            samplers = [single_digit_sampler(r, args.device) for r in args.stack_runs]
        except GankitError as e:
            print(f"stacked: {e}", file=sys.stderr)
            return 2
        evaluator = Evaluator("stacked-mnist", log=lambda *a: None)
        rows = []
        for run, sampler in zip(args.stack_runs, samplers, strict=True):
            rows.append(stack_single(run, sampler, evaluator, args.n))
            print(json.dumps(rows[-1]), flush=True)
        print(stack_table(rows))
        return 0
    print(
        f"{args.preset}, {args.seeds} seed(s), {torch.get_num_threads()} threads, {args.n} samples"
    )
    evaluator = Evaluator("stacked-mnist", log=lambda *a: None)
    rows = []

    def report(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.log:
            with open(args.log, "a") as f:
                f.write(json.dumps(row) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir or tmp)
        overrides = {"device": args.device} | ({"steps": str(args.steps)} if args.steps else {})
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            cfg = load_config(args.preset, overrides | {"seed": str(seed)})
            report(train_and_score(f"{args.preset}-{seed}", cfg, runs_dir, evaluator, args.n))
        if not args.no_baseline:
            budget = statistics.mean(r["train_s"] for r in rows)
            batch_size = load_config(args.preset).train.batch_size
            steps = baseline_steps(batch_size, budget, runs_dir, args.device)
            cfg = baseline_config(batch_size, steps, args.device)
            report(train_and_score("dcgan-baseline", cfg, runs_dir, evaluator, args.n))
    print(table(rows))
    seeds = [r for r in rows if r["family"] != "dcgan"]
    print(
        f"{args.preset}: modes min {min(r['stacked_modes'] for r in seeds):.0f}, "
        f"KL max {max(r['stacked_kl'] for r in seeds):.3f} over {len(seeds)} seed(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
