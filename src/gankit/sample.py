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
from gankit.config import from_dict
from gankit.data import to_uint8
from gankit.device import resolve_device
from gankit.errors import GankitError
from gankit.models import MODELS


def find_checkpoint(run: str | Path, which: str | None = None) -> Path:
    """A checkpoint path from a run folder and `which`: None/"last", "best", a step number, or a file path."""
    run = Path(run)
    if which and Path(which).is_file():
        return Path(which)
    if run.is_file():
        return run
    if not run.is_dir():
        raise GankitError(f"run folder {run} does not exist")
    folder = run / "checkpoints"
    if which in (None, "last", "best"):
        path = folder / f"{which or 'last'}.safetensors"
    elif which.isdigit():
        path = folder / f"step-{int(which):08d}.safetensors"
    else:
        path = Path(which)
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        raise GankitError(
            f"checkpoint {path} does not exist (available: {', '.join(have) or 'none'})"
        )
    return path


class Sampler:
    """A trained generator, ready to draw: `Sampler.load(run).images(n, seed)`."""

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
        ckpt.load_checkpoint(path, nets)
        dev = resolve_device(device)
        for net in nets.values():
            net.to(dev).eval()
        return cls(family, cfg.model, nets, meta, dev)

    @torch.no_grad()
    def images(self, n: int, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
        """n images as uint8, (n, C, H, W); the same seed gives the same images on any device."""
        gen = torch.Generator().manual_seed(seed)
        z = self.family.noise(self.model_cfg, n, gen, "cpu")
        chunks = [
            to_uint8(self.family.generate(self.nets, zb.to(self.device))).cpu()
            for zb in z.split(batch_size)
        ]
        return torch.cat(chunks)


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
