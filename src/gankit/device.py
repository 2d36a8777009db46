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


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """The context a training step runs in: bfloat16 autocast for amp "bf16" (matmuls and
    convolutions in bfloat16, reductions and losses in float32; weights, gradients and
    Adam's state stay float32, so no loss scaling is needed), a no-op for "none"."""
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GankitError(f"train.amp bf16 asked for, but {device} has no bfloat16 support")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
