"""Where a LAPGAN loses quality, level by level.

Feeds the finer levels of a trained `lapgan` run real coarse images instead of their own
coarser output, and scores the final 28 x 28 images against the held-out digits (FD in
MnistNet features, the FD `gankit eval` prints):

    real 28 x 28 (the training digits themselves)
    real 14 x 14 -> G2                       (the last level alone)
    real 7 x 7 -> G1 -> G2                   (the two finer levels)
    G0 -> G1 -> G2                           (the whole pyramid, as sampled)

    python bench/lapgan_levels.py RUN [--n 4000] [--seed 0]

Each line starting from real images uses the 4,000 training digits (or --n of them), each
finer level drawing its own noise; the whole pyramid draws --n samples.
"""

from __future__ import annotations

import argparse
import sys

import torch

from gankit.data import make_dataset, to_unit_range
from gankit.evaluate import Evaluator
from gankit.sample import Sampler


@torch.no_grad()
def refine_from(sampler: Sampler, coarse: torch.Tensor, level: int, seed: int) -> torch.Tensor:
    """Real images of pyramid level `level` (coarse, (N, C, h, w)) taken through the finer
    levels, each with its own noise: the final images (N, C, H, W) in [-1, 1]."""
    cfg = sampler.model_cfg
    gen = torch.Generator().manual_seed(seed)
    zs = [torch.randn(len(coarse), cfg.nz, generator=gen) for _ in range(level + 1, cfg.levels)]
    return sampler.family.refine(sampler.nets, coarse, zs)[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a finished run of the lapgan family (unconditional, MNIST)")
    p.add_argument("--n", type=int, default=4000, help="images per line (default: 4,000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    sampler = Sampler.load(args.run, device="cpu")
    if sampler.model_cfg.family != "lapgan" or sampler.classes:
        print("lapgan_levels: needs an unconditional lapgan run", file=sys.stderr)
        return 2
    levels = sampler.model_cfg.levels
    real = make_dataset("mnist", split="train").images[: args.n]  # (N, 1, 28, 28) in [-1, 1]
    pyramid = sampler.family.gaussian_pyramid(real, levels)
    evaluator = Evaluator("mnist", log=lambda *a: None)

    def fd(images: torch.Tensor) -> float:
        return evaluator.score(images, seed=args.seed)["fd_mnistnet"]

    size = lambda k: f"{pyramid[k].shape[-1]} x {pyramid[k].shape[-1]}"  # noqa: E731
    rows = [(f"real {size(levels - 1)}", fd(real))]
    for k in range(levels - 2, -1, -1):
        path = " -> ".join(f"G{j}" for j in range(k + 1, levels))
        rows.append(
            (f"real {size(k)} -> {path}", fd(refine_from(sampler, pyramid[k], k, args.seed)))
        )
    whole = to_unit_range(sampler.images(args.n, seed=args.seed))
    rows.append((" -> ".join(f"G{j}" for j in range(levels)) + " (as sampled)", fd(whole)))
    print("| input | FD |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
