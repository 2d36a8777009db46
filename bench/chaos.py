"""Kill -9 at random moments: does a run lose anything?

Trains the MLP preset with a checkpoint every few steps, so that many kills land while
a checkpoint is being written, and kills the process with SIGKILL at `--kills` random
moments (each a random delay after the run's newest checkpoint appeared). After every
kill it reads every checkpoint in the folder, then resumes with `gankit train --resume`.
At the end the final checkpoint is compared, tensor by tensor, with an uninterrupted
run of the same config and seed.

    python bench/chaos.py [--kills 20] [--steps 150] [--ckpt-every 2] [--seed 0]

Prints: kills survived, kills that landed mid-write (a temporary file was left),
unreadable checkpoints, stray temporary files at the end, and whether the final weights,
optimiser state and RNG states are bit-identical to the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gankit import checkpoint as ckpt
from gankit import files


def gankit(*args: str) -> list[str]:
    return [sys.executable, "-m", "gankit", "train", *args]


def wait_for_new_checkpoint(last: Path, proc: subprocess.Popen, since: float) -> bool:
    """Until `last` is newer than `since` (True), or the process ends (False)."""
    while proc.poll() is None:
        try:
            if last.stat().st_mtime_ns > since:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--ckpt-every", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seeds the run and the kill moments")
    ap.add_argument("--max-delay", type=float, default=0.5, help="seconds after a checkpoint")
    args = ap.parse_args()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    options = ["--config", "mlp-mnist", "--steps", str(args.steps)]
    options += ["--ckpt-every", str(args.ckpt_every), "--keep", "2", "--seed", str(args.seed)]
    options += ["--sample-every", "25", "--log-every", "10", "--device", "cpu", "--no-progress"]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        t0 = time.perf_counter()
        subprocess.run(
            gankit(*options, "--runs-dir", tmp, "--name", "calm"),
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        calm_seconds = time.perf_counter() - t0

        run = runs / "chaos"
        last = run / "checkpoints" / "last.safetensors"
        first = gankit(*options, "--runs-dir", tmp, "--name", "chaos")
        resume = gankit("--resume", str(run), "--no-progress")
        kills = mid_write = unreadable = resumes = 0
        t0 = time.perf_counter()
        while True:
            cmd = first if kills == 0 and not run.exists() else resume
            resumes += cmd is resume
            since = last.stat().st_mtime_ns if last.exists() else 0
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if kills < args.kills and wait_for_new_checkpoint(last, proc, since):
                time.sleep(rng.uniform(0, args.max_delay))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                mid_write += bool(files.stale_temps(run / "checkpoints"))
                for path in (run / "checkpoints").glob("[!.]*.safetensors"):
                    try:
                        ckpt.read(path)
                    except Exception as e:  # noqa: BLE001 -- counted and shown, not raised
                        unreadable += 1
                        print(f"unreadable after kill {kills}: {path.name}: {e}")
                step = ckpt.read_meta(last)["step"] if last.exists() else 0
                print(f"kill {kills:2d}: at step {step}, mid-write: {mid_write}", flush=True)
                continue
            _, err = proc.communicate()
            if proc.returncode != 0:
                print(f"gankit failed (exit {proc.returncode}): {err.strip()}")
                return 1
            break
        chaos_seconds = time.perf_counter() - t0

        calm, _ = ckpt.read(runs / "calm" / "checkpoints" / "last.safetensors")
        chaotic, meta = ckpt.read(last)
        same = calm.keys() == chaotic.keys() and all(torch.equal(calm[k], chaotic[k]) for k in calm)
        stray = files.stale_temps(run)
    print(f"kills survived:            {kills}/{args.kills} ({resumes} resumes)")
    print(f"kills mid-write:           {mid_write} (a temporary checkpoint file was left)")
    print(f"unreadable checkpoints:    {unreadable}")
    print(f"stray temporary files:     {len(stray)} at the end")
    print(f"final step:                {meta['step']} of {args.steps}")
    print(
        f"bit-identical to the uninterrupted run: {'yes' if same else 'NO'} ({len(calm)} tensors)"
    )
    print(f"wall time: uninterrupted {calm_seconds:.0f} s, with the kills {chaos_seconds:.0f} s")
    return 0 if same and not stray and not unreadable and kills == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
