"""Inference only: rebuild a run's generator from its checkpoint and draw images.

Everything needed lives in the checkpoint itself (model config, image shape), so
sampling needs neither the dataset nor the training code.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from gankit import checkpoint as ckpt
from gankit import files
from gankit.checkpoint import find_checkpoint
from gankit.config import from_dict
from gankit.data import format_bytes, memory_bytes, read_npy, to_uint8
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
        dev = check_device(device)
        path = find_checkpoint(run, checkpoint)
        meta = ckpt.read_meta(path)
        ckpt.check_run_meta(meta, path)
        try:
            cfg = from_dict({"model": meta["config"]["model"]})
        except GankitError as e:
            raise GankitError(f"checkpoint {path}: {e}") from None
        family = MODELS[cfg.model.family]
        shape, num_classes = tuple(meta["img_shape"]), len(meta.get("classes", []))
        ema = meta["config"].get("train", {}).get("ema", 0)
        if not isinstance(ema, (int, float)) or isinstance(ema, bool) or not 0 <= ema < 1:
            raise GankitError(f"checkpoint {path}: train.ema must be in [0, 1), got {ema!r}")
        check_fits(path, cfg.model, shape, num_classes, ema)
        nets = family.build(cfg.model, shape, num_classes)
        if ema:
            nets = add_ema(nets, ema)
        ckpt.load_checkpoint(path, nets)
        for net in nets.values():
            net.to(dev).eval()
        return cls(family, cfg.model, nets, meta, dev)

    def image_bytes(self, n: int) -> int:
        """Memory that drawing n images takes: their latents, the uint8 chunks and the copy
        `images` concatenates them into."""
        latent = self.family.noise(self.model_cfg, 1, torch.Generator(), "cpu").numel()
        return n * (4 * latent + 2 * math.prod(self.meta["img_shape"]) + 8)

    def check_memory(self, n: int, flag: str = "--n") -> None:
        """Refuse to draw n images that cannot fit in this machine's memory, before any is."""
        need, have = self.image_bytes(n), memory_bytes()
        if have and need > have:
            raise GankitError(
                f"{flag} {n:,} images of {tuple(self.meta['img_shape'])} would take about "
                f"{format_bytes(need)} of memory, more than this machine's {format_bytes(have)}: "
                f"draw fewer (several files with different --seed, if you need more)"
            )

    @property
    def classes(self) -> list[str]:
        """The class names a conditional generator takes ([] when unconditional)."""
        return list(self.meta.get("classes", [])) if is_conditional(self.model_cfg) else []

    def inputs(self) -> dict[str, tuple]:
        """What the sampling network takes, by name, each as a shape whose dynamic axes are
        named ("batch", "height", ...): the family's latent, split along dim 1 into the
        parts its `input_shapes` names (LAPGAN: z, noise1, noise2; SRGAN: the LR image lr),
        else one `z` shaped like its noise; then, for a conditional run, labels (batch,)."""
        if hasattr(self.family, "input_shapes"):
            spec = dict(self.family.input_shapes(self.model_cfg, tuple(self.meta["img_shape"])))
        else:
            shape = self.family.noise(self.model_cfg, 1, torch.Generator(), "cpu").shape
            spec = {"z": ("batch", *shape[1:])}
        if self.classes:
            spec["labels"] = ("batch",)
        return spec

    def read_latents(
        self, path: str | Path, labels_path: str | Path | None = None, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`gankit sample --latents FILE.npy [--labels FILE.npy]`: the latents to draw from,
        float32, and the labels (N,) int64 of a conditional run (None otherwise).

        A latent is (N, ...) shaped like the first input (z). A family whose latent has
        several parts (LAPGAN: z, noise1, noise2) takes the first part alone, the others
        then drawn from `seed` as they are without --latents, or all parts side by side.
        A conditional run needs one label per latent; an unconditional one refuses labels.
        """
        whole = self.family.noise(self.model_cfg, 1, torch.Generator(), "cpu").shape[1:]
        parts = [name for name in self.inputs() if name != "labels"]
        first = tuple(self.inputs()[parts[0]][1:])
        z = read_npy(path, "--latents")
        if z.ndim < 2 or tuple(z.shape[1:]) not in (first, tuple(whole)) or not len(z):
            want = f"(N, {', '.join(map(str, first))})"
            if first != tuple(whole):
                want += f" ({parts[0]} alone) or (N, {', '.join(map(str, whole))}) "
                want += f"({', '.join(parts)} side by side)"
            raise GankitError(f"--latents {path} must be {want} with N >= 1, got shape {z.shape}")
        if z.dtype.kind != "f":
            raise GankitError(f"--latents {path} must hold floats, got {z.dtype}")
        z = torch.from_numpy(z.astype(np.float32))
        if not torch.isfinite(z).all():
            raise GankitError(f"--latents {path} holds NaN or infinite values (as float32)")
        if z.shape[1:] != whole:  # the other parts: drawn from the seed as without --latents
            drawn = self.family.noise(self.model_cfg, len(z), torch.Generator().manual_seed(seed))
            z = torch.cat([z, drawn[:, first[0] :]], dim=1)
        k = len(self.classes)
        if not k:
            if labels_path is not None:
                raise GankitError("this run's generator is unconditional: it takes no --labels")
            return z, None
        if labels_path is None:
            raise GankitError(
                f"this run's generator is conditional ({k} classes): --latents needs "
                f"--labels FILE.npy, one class index per latent"
            )
        y = read_npy(labels_path, "--labels")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise GankitError(
                f"--labels {labels_path} must be ({len(z)},) whole numbers (class indices), "
                f"got shape {y.shape} {y.dtype}"
            )
        if len(y) != len(z):
            raise GankitError(
                f"--labels {labels_path} holds {len(y)} labels for {len(z)} latents: "
                f"need one per latent"
            )
        bad = y[(y < 0) | (y >= k)]
        if len(bad):
            raise GankitError(f"class {bad[0]} does not exist: this run has classes 0..{k - 1}")
        return z, torch.from_numpy(y.astype(np.int64))

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


def check_fits(path: Path, model_cfg, img_shape: tuple, num_classes: int, ema: float) -> None:
    """Refuse a checkpoint whose tensors do not fit the networks its config describes,
    reading its header only: the networks are built on the meta device (shapes, no
    storage), so a checkpoint whose config lies (a width of 10^9) allocates nothing."""
    family = MODELS[model_cfg.family]
    try:
        with torch.device("meta"):
            nets = family.build(model_cfg, img_shape, num_classes)
            nets = add_ema(nets, ema) if ema else nets
    except GankitError as e:
        raise GankitError(f"checkpoint {path}: {e}") from None
    except Exception:  # a family the meta device cannot build: load_checkpoint still checks
        return
    ckpt.check_shapes(path, nets)


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
    """Write uint8 images (N, C, H, W) under the key `images`, atomically: a failed write
    leaves an existing file as it was."""
    files.write_with(
        Path(path), lambda tmp: np.savez_compressed(tmp, images=images.numpy(), **arrays)
    )


def check_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N as a torch device; anything else, or a GPU torch does not
    see, is refused with one line."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise GankitError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    device = resolve_device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise GankitError(
            f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)"
        )
    return device
