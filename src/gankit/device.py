"""Choosing the torch device: `auto` means CUDA when torch sees one, else the CPU."""

from __future__ import annotations

import torch

from gankit.errors import GankitError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GankitError(f"device {name!r} asked for, but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GankitError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
