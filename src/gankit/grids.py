"""Sample grids as PNG files, in torchvision.utils.make_grid's layout.

Written here rather than with torchvision's save_image because importing torchvision
pulls in torch._dynamo (through torchvision.ops): 1.35 s of every `gankit sample` or
`gankit eval` process on a 2-core CPU, for a reshape and a PNG. (A training process
imports torch._dynamo anyway, with its first optimiser.)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gankit import files


def grid(images: torch.Tensor, nrow: int, padding: int = 2) -> np.ndarray:
    """uint8 images (N, C, H, W) -> one uint8 array (rows x (H + p) + p, nrow x (W + p) + p)
    for one channel, with a channel axis last for three; black gaps and border."""
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):  # (H, W, C) each
        y, x = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        out[y : y + h, x : x + w] = image
    return out[..., 0] if c == 1 else out


def save_grid(path: str | Path, images: torch.Tensor, nrow: int) -> None:
    """A PNG grid of uint8 images (N, C, H, W), nrow per row, written atomically."""
    picture = Image.fromarray(grid(images.cpu(), nrow))
    files.write_with(Path(path), lambda tmp: picture.save(tmp, format="PNG"))
