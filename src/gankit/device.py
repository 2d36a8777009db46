"""Choosing the torch device: `auto` means CUDA when torch sees one, else the CPU."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

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


def autocast(device: torch.device, amp: str) -> Callable[[], torch.autocast]:
    """What GameSettings.autocast takes: a factory of the context that a training step's
    forward passes and losses run in (backward passes and optimiser steps run outside it).
    amp "bf16": bfloat16 autocast (matmuls and convolutions in bfloat16, reductions and
    losses in float32; weights, gradients and Adam's state stay float32, so no loss scaling
    is needed); "none": a no-op. Refuses bf16 on a GPU without it, here, once."""
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GankitError(f"train.amp bf16 asked for, but {device} has no bfloat16 support")
    return partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
