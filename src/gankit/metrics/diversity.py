"""Diversity of a batch of images: a cheap mode-collapse alarm during training.

    diversity(x) = mean over pairs i < j of ||x_i - x_j|| / sqrt(C * H * W)

the root-mean-square pixel difference of two images of the batch, for images
in [0, 1]. A generator that collapses to a few outputs draws its fixed noise
batch as near-copies, and the figure falls towards 0.
"""

from __future__ import annotations

import torch


def diversity(images: torch.Tensor) -> float:
    """(N, C, H, W) in [0, 1], N >= 2 -> mean pairwise RMS distance in [0, 1]."""
    x = images.flatten(1).double()  # (N, D)
    return (torch.pdist(x).mean() / x.shape[1] ** 0.5).item()
