"""What the divergence guard costs: training speed with it and with it switched off.

The guard (gankit.train.Guard) checks the Scalars window and every weight for
non-finite values at each step where something reads the state (a log, a grid, an
evaluation, a checkpoint) and keeps a copy of the good state in memory; no check runs
per step. Here each preset trains through the real loop (`gankit.train.train`) twice
per repeat, with the guard and with a guard that does nothing, interleaved, and the
best of the repeats is kept.

    python bench/guard.py [--presets mlp-mnist,dcgan-mnist] [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from gankit import train as train_module
from gankit.config import load_config


class NoGuard(train_module.Guard):
    def __init__(self, run):
        pass

    def __call__(self, run, scalars, book) -> bool:
        return True


def images_per_s(cfg, guarded: bool, folder: Path) -> float:
    real = train_module.Guard
    train_module.Guard = real if guarded else NoGuard
    try:
        s = train_module.train(cfg, folder, progress=False, log=lambda *a, **k: None)
    finally:
        train_module.Guard = real
    return s.images_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="mlp-mnist,dcgan-mnist")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"{'preset':<14} {'guard img/s':>12} {'no guard':>10} {'cost':>7}")
    for preset in args.presets.split(","):
        # The preset's own log, grid and checkpoint intervals: what a user's run pays.
        cfg = load_config(preset, {"steps": str(args.steps), "device": args.device})
        best = {True: 0.0, False: 0.0}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                for guarded in (False, True):
                    folder = Path(tmp) / f"{guarded}-{r}"
                    best[guarded] = max(best[guarded], images_per_s(cfg, guarded, folder))
        cost = 1 - best[True] / best[False]
        print(f"{preset:<14} {best[True]:>12.0f} {best[False]:>10.0f} {cost:>7.1%}")


if __name__ == "__main__":
    main()
