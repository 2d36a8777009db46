"""Inference only: rebuild a run's generator from its checkpoint and draw images.

Everything needed lives in the checkpoint itself (model config, image shape), so
sampling needs neither the dataset nor the training code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from gankit import checkpoint as ckpt
from gankit.checkpoint import find_checkpoint
from gankit.config import from_dict
from gankit.data import to_uint8
from gankit.device import resolve_device
from gankit.errors import GankitError
from gankit.game import add_ema, sampling_nets
from gankit.models import MODELS, is_conditional


class Sampler:
    """A trained generator, ready to draw: `Sampler.load(run).images(n, seed)`.

    A run that kept a moving average of G's weights (train.ema) samples from it.
    """

    def __init__(self, family, model_cfg, nets, meta: dict, device: torch.device):
        self.family, self.model_cfg, self.nets, self.meta, self.device = (
            family,
            model_cfg,
            nets,
            meta,
            device,
        )

    @classmethod
    def load(cls, run: str | Path, checkpoint: str | None = None, device: str = "auto") -> Sampler:
        path = find_checkpoint(run, checkpoint)
        meta = ckpt.read_meta(path)
        cfg = from_dict({"model": meta["config"]["model"]})
        family = MODELS[cfg.model.family]
        nets = family.build(cfg.model, tuple(meta["img_shape"]), len(meta.get("classes", [])))
        ema = meta["config"].get("train", {}).get("ema", 0)
        if ema:
            nets = add_ema(nets, ema)
        ckpt.load_checkpoint(path, nets)
        dev = resolve_device(device)
        for net in nets.values():
            net.to(dev).eval()
        return cls(family, cfg.model, nets, meta, dev)

    @property
    def classes(self) -> list[str]:
        """The class names a conditional generator takes ([] when unconditional)."""
        return list(self.meta.get("classes", [])) if is_conditional(self.model_cfg) else []

    def labels(self, n: int, classes: list[int] | None = None) -> torch.Tensor | None:
        """Labels for n samples: `classes` (default: all) in equal blocks, in the order given;
        None for an unconditional generator."""
        if not self.classes:
            if classes is not None:
                raise GankitError("this run's generator is unconditional: it takes no --class")
            return None
        k = len(self.classes)
        classes = list(range(k)) if classes is None else classes
        bad = [c for c in classes if not 0 <= c < k]
        if bad:
            raise GankitError(f"class {bad[0]} does not exist: this run has classes 0..{k - 1}")
        if n < len(classes):
            raise GankitError(f"--n {n} is fewer than the {len(classes)} classes asked for")
        block = torch.arange(n) * len(classes) // n  # n samples split into equal blocks
        return torch.tensor(classes)[block]

    @torch.no_grad()
    def interpolate(self, pairs: int, steps: int, seed: int = 0) -> torch.Tensor:
        """`pairs` rows of `steps` images, each row walking (slerp) from one random latent to
        another; a conditional G keeps one class per row. uint8, (pairs * steps, C, H, W)."""
        gen = torch.Generator().manual_seed(seed)
        z = self.family.noise(self.model_cfg, 2 * pairs, gen, "cpu")
        path = slerp(z[:pairs], z[pairs:], torch.linspace(0, 1, steps)).flatten(0, 1)
        labels = None
        if self.classes:
            labels = (torch.arange(pairs) % len(self.classes)).repeat_interleave(steps)
        return self.images(len(path), labels=labels, latents=path)

    @torch.no_grad()
    def pyramid(self, n: int, seed: int = 0, classes: list[int] | None = None) -> torch.Tensor:
        """For a pyramid model (LAPGAN): n rows, one column per level, coarse to fine, each
        level enlarged to the full size (nearest). A conditional model cycles through
        `classes` (default: all). uint8, (n * levels, C, H, W)."""
        if not hasattr(self.family, "pyramid_samples"):
            raise GankitError(
                f"--pyramid needs a pyramid model (lapgan); this run is {self.model_cfg.family}"
            )
        gen = torch.Generator().manual_seed(seed)
        z = self.family.noise(self.model_cfg, n, gen, "cpu").to(self.device)
        labels = None
        if self.classes:
            cycle = self.labels(len(classes or self.classes), classes)
            labels = cycle[torch.arange(n) % len(cycle)].to(self.device)
        levels = self.family.pyramid_samples(self.nets, z, labels)
        size = levels[-1].shape[-1]
        big = [torch.nn.functional.interpolate(g, size=size, mode="nearest") for g in levels]
        return to_uint8(torch.stack(big, dim=1).flatten(0, 1)).cpu()  # (n * levels, C, H, W)

    @torch.no_grad()
    def images(
        self,
        n: int,
        seed: int = 0,
        batch_size: int = 500,
        labels: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """n images as uint8, (n, C, H, W); the same seed gives the same images on any device.
        A conditional generator draws `labels` (n,), by default all classes in equal blocks.
        `latents` (n, ...) replaces the seeded noise."""
        if labels is None:
            labels = self.labels(n)
        z = latents
        if z is None:
            z = self.family.noise(self.model_cfg, n, torch.Generator().manual_seed(seed), "cpu")
        nets = sampling_nets(self.nets)
        chunks = []
        for i in range(0, n, batch_size):
            yb = None if labels is None else labels[i : i + batch_size].to(self.device)
            x = self.family.generate(nets, z[i : i + batch_size].to(self.device), yb)
            chunks.append(to_uint8(x).cpu())
        return torch.cat(chunks)


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents (B, nz) at fractions t (T,) -> (B, T, nz).

    Gaussian latents concentrate on a shell of radius ~sqrt(nz); a straight line between
    two of them cuts through the low-probability interior, the great circle stays on the
    shell (White 2016).
    """
    a, b = z0[:, None], z1[:, None]  # (B, 1, nz)
    cos = torch.nn.functional.cosine_similarity(z0, z1, dim=1).clamp(-1, 1)[:, None, None]
    omega = torch.arccos(cos)  # (B, 1, 1), angle between the two
    t = t[None, :, None]  # (1, T, 1)
    so = torch.sin(omega)
    linear = (1 - t) * a + t * b  # the limit as omega -> 0
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / so.clamp_min(1e-7)
    return torch.where(so > 1e-6, spherical, linear)


def save_npz(path: str | Path, images: torch.Tensor, **arrays: np.ndarray) -> None:
    """Write uint8 images (N, C, H, W) under the key `images`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    try:
        np.savez_compressed(tmp, images=images.numpy(), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_grid(path: str | Path, images: torch.Tensor, nrow: int) -> None:
    """A PNG grid of uint8 images, nrow per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255.0, path, nrow=nrow, padding=2)
