"""Training throughput of gankit's MLP GAN against the classic tutorial loop.

The reference is the loop most GAN tutorials teach, written out below with the
same architecture and hyper-parameters: a torch DataLoader over the same digits
with per-sample ToTensor() + Normalize((0.5,), (0.5,)), a Sigmoid output with
BCELoss, `loss_disc.backward(retain_graph=True)` and the generator step re-using
the same fake batch through D. gankit is timed through its real training loop
(`gankit.train.train`), logging, grids and the final checkpoint included.

Also printed: the machine's float32 matmul GFLOP/s and the fraction of it that
gankit achieves, with a training step's FLOPs counted by torch's FlopCounterMode.

    python bench/throughput.py [--steps 400] [--batch-sizes 32,64] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from gankit.config import load_config
from gankit.data import make_dataset, to_uint8
from gankit.game import make_optimizers
from gankit.models import mlp
from gankit.train import train

# ---- the classic tutorial loop (the reference) --------------------------------------------


class DigitsPIL(torch.utils.data.Dataset):
    """Like torchvision's MNIST: uint8 arrays, a PIL image and a transform per sample."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i], mode="L")), 0


def reference_images_per_s(digits: np.ndarray, batch_size: int, steps: int, device: str) -> float:
    torch.manual_seed(0)
    cfg = mlp.Config()
    G = mlp.Generator(cfg.nz, cfg.g_widths, (1, 28, 28)).to(device)
    disc = mlp.Discriminator(cfg.d_widths, (1, 28, 28), cfg.leak, cfg.d_dropout)
    D = nn.Sequential(disc, nn.Sigmoid()).to(device)  # probabilities, for BCELoss
    opt_gen = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_disc = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion = nn.BCELoss()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    loader = DataLoader(DigitsPIL(digits, tf), batch_size=batch_size, shuffle=True, drop_last=True)

    def batches():
        while True:
            yield from loader

    it, done, t0 = batches(), 0, None
    for i in range(steps + 20):
        if i == 20:  # warm-up steps are not timed
            _sync(device)
            t0 = time.perf_counter()
        real, _ = next(it)
        real = real.to(device)
        noise = torch.randn(batch_size, cfg.nz, device=device)
        fake = G(noise)
        disc_real = D(real).view(-1)
        loss_real = criterion(disc_real, torch.ones_like(disc_real))
        disc_fake = D(fake).view(-1)
        loss_fake = criterion(disc_fake, torch.zeros_like(disc_fake))
        loss_disc = (loss_real + loss_fake) / 2
        D.zero_grad()
        loss_disc.backward(retain_graph=True)
        opt_disc.step()
        output = D(fake).view(-1)
        loss_gen = criterion(output, torch.ones_like(output))
        G.zero_grad()
        loss_gen.backward()
        opt_gen.step()
        done += batch_size if i >= 20 else 0
    _sync(device)
    return done / (time.perf_counter() - t0)


# ---- gankit -------------------------------------------------------------------------------


def gankit_images_per_s(batch_size: int, steps: int, device: str) -> float:
    overrides = {"steps": steps, "batch_size": batch_size, "device": device, "log_every": 100}
    cfg = load_config(None, {k: str(v) for k, v in overrides.items()})
    with tempfile.TemporaryDirectory() as tmp:
        return train(cfg, f"{tmp}/run", progress=False, log=lambda *a: None).images_per_s


def gankit_flops_per_image(batch_size: int, device: str) -> float:
    """FLOPs of one full training step (D step + G step), per real image."""
    cfg = mlp.Config()
    nets = {k: v.to(device) for k, v in mlp.build(cfg, (1, 28, 28)).items()}
    opts = make_optimizers(nets, {"G": 2e-4, "D": 2e-4}, (0.5, 0.999))
    real = torch.rand(batch_size, 1, 28, 28, device=device) * 2 - 1

    def z_fn(n):
        return torch.randn(n, cfg.nz, device=device)

    with FlopCounterMode(display=False) as counter:
        mlp.step(nets, opts, [(real, None)], z_fn)
    return counter.get_total_flops() / batch_size


def matmul_gflops(device: str, n: int = 2048, reps: int = 20) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="timed steps per measurement")
    p.add_argument("--batch-sizes", default="32,64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs each")
    args = p.parse_args()

    digits = to_uint8(make_dataset("mnist").images)[:, 0].numpy()  # (N, 28, 28) uint8
    peak = matmul_gflops(args.device)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"float32 matmul (2048^3): {peak:.1f} GFLOP/s")
    print(
        f"{'batch':>5} {'reference img/s':>16} {'gankit img/s':>13} {'speed-up':>9} {'gankit GFLOP/s':>15} {'of peak':>8}"
    )
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        ref = max(
            reference_images_per_s(digits, bs, args.steps, args.device) for _ in range(args.repeats)
        )
        ours = max(gankit_images_per_s(bs, args.steps, args.device) for _ in range(args.repeats))
        gflops = ours * gankit_flops_per_image(bs, args.device) / 1e9
        print(
            f"{bs:>5} {ref:>16.0f} {ours:>13.0f} {ours / ref:>8.2f}x {gflops:>15.1f} {gflops / peak:>8.1%}"
        )


if __name__ == "__main__":
    main()
