"""The model zoo: train every MNIST preset for its preset length, then score it.

Each `*-mnist` preset is trained on the bundled digits exactly as
`gankit train --config` would (same code path, one run after the other so that
timings are not shared), then 10,000 samples (1,000 per class for conditional
presets) are scored by `gankit eval`'s metrics against the 1,000 held-out digits.

    python bench/zoo.py [--presets dcgan-mnist,cgan-mnist] [--steps N] [--runs-dir DIR]
                        [--n 10000] [--log zoo.jsonl] [--plot zoo.png]
    python bench/zoo.py --replot zoo.jsonl --plot zoo.png   # table and plot of a logged run

Prints a Markdown table: steps, wall time, images/s, FD and KID in MnistNet
features, precision/recall/coverage, class KL and, for conditional presets, the
share of samples classified as the class they were drawn for (mean and worst class).
`--plot` draws FD against training time, one labelled point a preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from gankit.config import load_config, preset_names
from gankit.data import to_unit_range
from gankit.evaluate import Evaluator
from gankit.models import MODELS, is_adversarial
from gankit.sample import Sampler
from gankit.train import train


def run_preset(name: str, runs_dir: Path, steps: int | None, n: int, device: str = "cpu") -> dict:
    overrides = {"steps": str(steps)} if steps else {}
    cfg = load_config(name, overrides | {"device": device})
    run_dir = runs_dir / name
    if run_dir.exists():
        raise SystemExit(f"zoo: {run_dir} exists; pick another --runs-dir")
    t0 = time.perf_counter()
    summary = train(cfg, run_dir, progress=False, log=lambda *a: None)
    wall = time.perf_counter() - t0
    sampler = Sampler.load(run_dir, device=device)
    labels = sampler.labels(n)  # conditional: the classes in equal blocks of n / 10
    fake = to_unit_range(sampler.images(n, seed=0, labels=labels))
    d = cfg.data
    evaluator = Evaluator(d.dataset, d.root, d.img_size, d.channels, log=lambda *a: None)
    metrics = evaluator.score(fake, seed=0, labels=labels)
    return {
        "preset": name,
        "family": cfg.model.family,
        "loss": cfg.train.loss if is_adversarial(MODELS[cfg.model.family]) else "-ELBO",
        "steps": summary.step,
        "train_s": round(summary.seconds, 1),
        "wall_s": round(wall, 1),
        "images_per_s": round(summary.images_per_s),
        "metrics": metrics,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
    }


def table(rows: list[dict]) -> str:
    out = [
        "| preset | family | loss | steps | wall | img/s | FD | KID | precision | recall "
        "| coverage | class KL | label acc (worst class) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        acc = (
            f"{m['label_accuracy']:.3f} ({m['label_accuracy_min']:.3f})"
            if "label_accuracy" in m
            else "-"
        )
        out.append(
            f"| {r['preset']} | {r['family']} | {r['loss']} | {r['steps']} "
            f"| {r['wall_s'] / 60:.1f} min | {r['images_per_s']:,} | {m['fd_mnistnet']:.1f} "
            f"| {m['kid_mnistnet']:.1f} | {m['precision']:.3f} | {m['recall']:.3f} "
            f"| {m['coverage']:.3f} | {m['class_kl']:.4f} | {acc} |"
        )
    return "\n".join(out)


LABEL_PT = 8  # the plot's label font size, in points


def plot(rows: list[dict], path: str) -> None:
    """FD against training time, log-scaled FD, one labelled point a preset (matplotlib)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    max_fd = max(r["metrics"]["fd_mnistnet"] for r in rows)
    points = [(r["wall_s"] / 60, r["metrics"]["fd_mnistnet"]) for r in rows]
    for r, (x, y) in zip(rows, points, strict=True):
        conditional = "label_accuracy" in r["metrics"]
        ax.scatter(
            x, y, s=36, marker="s" if conditional else "o", color="C1" if conditional else "C0"
        )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 50, not 5 x 10^1
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([t for t in (2, 5, 10, 20, 50, 100, 200, 500) if t < 1.25 * max_fd])
    ax.set_xlim(0, max(r["wall_s"] for r in rows) / 60 * 1.2 + 0.5)  # room for the labels
    # fixed limits (room for a label below the lowest point) and the final layout, so that
    # the pixel boxes label_offsets computes are where the labels land
    ax.set_ylim(min(y for _, y in points) / 1.3, max_fd * 1.25)
    fig.tight_layout()
    offsets = label_offsets(ax, rows, points)
    for r, (x, y), offset in zip(rows, points, offsets, strict=True):
        ax.annotate(
            r["preset"], (x, y), textcoords="offset points", xytext=offset, fontsize=LABEL_PT
        )
    ax.set_xlabel("training time on this machine (minutes)")
    ax.set_ylabel("FD in MnistNet features (lower is better)")
    ax.set_title("gankit's MNIST presets: quality against training time", fontsize=10)
    ax.scatter([], [], marker="o", color="C0", label="unconditional")
    ax.scatter([], [], marker="s", color="C1", label="conditional")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def label_offsets(ax, rows: list[dict], points: list[tuple[float, float]]) -> list[tuple]:
    """Each label above right of its point, or below right where that would overlap a label
    already placed (presets of near time and FD, such as cgan and acgan): a greedy pass from
    the highest FD down, so the lower of two close points takes the label below. matplotlib
    has no label placement of its own; adjustText would be a dependency for ten labels."""
    to_px = ax.transData.transform
    pt = ax.figure.dpi / 72  # pixels per point
    placed, offsets = [], [None] * len(rows)
    for i in sorted(range(len(rows)), key=lambda i: -points[i][1]):
        px, py = to_px(points[i])
        width = 0.62 * LABEL_PT * pt * len(rows[i]["preset"])  # ~0.62 em a character
        for dy in (4, -11, 12, -19):
            # the text sits on its baseline at dy: 3 points of descenders and margin below it
            box = (px + 5 * pt, py + (dy - 3) * pt, px + 5 * pt + width, py + (dy + 9) * pt)
            if not any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed
            ):
                break
        placed.append(box)
        offsets[i] = (5, dy)
    return offsets


def mnist_presets() -> list[str]:
    """Every preset that trains on the bundled MNIST digits (Stacked MNIST has bench/stacked.py)."""
    return [n for n in preset_names() if load_config(n).data.dataset == "mnist"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", help="comma-separated preset names (default: every *-mnist one)")
    p.add_argument("--steps", type=int, help="override every preset's length (quick checks)")
    p.add_argument("--runs-dir", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--n", type=int, default=10_000, help="samples scored per preset")
    p.add_argument("--device", default="cpu", help="train and sample on: cpu (default) | cuda")
    p.add_argument("--log", help="also append each preset's results to this JSON-lines file")
    p.add_argument("--plot", help="draw FD against training time into this PNG")
    p.add_argument("--replot", metavar="LOG", help="train nothing: table (and --plot) of a --log")
    args = p.parse_args()
    if args.replot:
        rows = [json.loads(line) for line in Path(args.replot).read_text().splitlines() if line]
        print(table(rows))
        if args.plot:
            plot(rows, args.plot)
        return 0
    names = args.presets.split(",") if args.presets else mnist_presets()
    missing = [name for name in names if name not in preset_names()]
    if missing:
        print(f"zoo: no preset {missing[0]}; presets: {', '.join(preset_names())}", file=sys.stderr)
        return 2
    print(f"{len(names)} presets, {torch.get_num_threads()} threads, scoring {args.n} samples each")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.runs_dir or tmp)
        for name in names:
            row = run_preset(name, runs_dir, args.steps, args.n, args.device)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
