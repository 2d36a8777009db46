"""Training images/s of the MLP and DCGAN presets on one process and on several.

Each setting runs the real command, `gankit train --config X --steps N
[--nproc 2]`, and reads the images/s it prints (the whole loop: logging, grids and the
final checkpoint included; start-up excluded):

    1 process x 2 threads    what `gankit train` does on this machine by default
    2 processes x 1 thread   `--nproc 2` (gloo); each worker gets cores / N threads
    1 process x 1 thread     the unit the scaling efficiency is measured against

Scaling efficiency = images/s of N processes / (N x images/s of 1 process x 1 thread).
On a machine with a GPU it also runs 1 process on the GPU: float32, `--amp bf16`, and
bf16 with `--channels-last true`. (NCCL needs a GPU per process: a one-GPU machine
cannot show its scaling.)

    python bench/scaling.py [--steps 600] [--presets mlp-mnist,dcgan-mnist] [--nproc 2]
                            [--gpu-only]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch


def images_per_s(preset: str, steps: int, threads: int, extra: list[str], runs: str) -> float:
    cmd = [
        sys.executable,
        "-m",
        "gankit",
        "train",
        "--config",
        preset,
    ]
    cmd += ["--steps", str(steps), "--runs-dir", runs, "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    found = re.search(r"in \d+ s, (\d+) images/s", p.stdout)
    if p.returncode or not found:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr.strip()}")
    return float(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--presets", default="mlp-mnist,dcgan-mnist")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU table")
    args = ap.parse_args()
    n, cores = args.nproc, os.cpu_count() or 1
    print(f"{cores} cores; {args.steps} steps per setting; images/s of the whole training loop")
    print(f"{'preset':<14} {'1p x ' + str(cores) + 't':>9} {f'{n}p x {max(1, cores // n)}t':>9} "
          f"{'1p x 1t':>9} {'efficiency':>11}")  # fmt: skip
    with tempfile.TemporaryDirectory() as runs:
        for preset in [] if args.gpu_only else args.presets.split(","):
            cpu = ["--device", "cpu"]
            whole = images_per_s(preset, args.steps, cores, cpu, runs)
            many = images_per_s(preset, args.steps, cores, [*cpu, "--nproc", str(n)], runs)
            unit = images_per_s(preset, args.steps, 1, cpu, runs)
            print(
                f"{preset:<14} {whole:>9.0f} {many:>9.0f} {unit:>9.0f} {many / (n * unit):>10.0%}"
            )
        if not torch.cuda.is_available():
            print("no GPU on this machine: the CUDA figures (1 GPU, float32 and bf16) were not run")
            return
        print(f"\nGPU: {torch.cuda.get_device_name()}")
        print(f"{'preset':<14} {'float32':>9} {'bf16':>9} {'bf16+NHWC':>10}")
        for preset in args.presets.split(","):
            fp32, bf16, both = (
                images_per_s(preset, args.steps, cores, ["--device", "cuda", *opts], runs)
                for opts in (
                    ["--amp", "none", "--channels-last", "false"],
                    ["--amp", "bf16", "--channels-last", "false"],
                    ["--amp", "bf16", "--channels-last", "true"],
                )
            )
            print(f"{preset:<14} {fp32:>9.0f} {bf16:>9.0f} {both:>10.0f}")


if __name__ == "__main__":
    main()
